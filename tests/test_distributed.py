"""DistributedDataParallel on CPU (gloo): two processes search like one with the same global
batch, every rank ends with the same gates, and the CLI runs unchanged under torchrun."""

import json
import os
import socket
import subprocess
import sys

import torch
import torch.multiprocessing as mp
from conftest import tiny_spec, write_fake_fashion
from test_trainer import loader

from repas import distributed
from repas.cli import main
from repas.config import SearchConfig
from repas.search import Budget, create_method, spec_cost
from repas.supernet import build
from repas.tasks import ClassificationTask
from repas.train import Trainer

CFG = dict(epochs=2, lr=0.05, batch_size=16)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _search(out, frozen_bn: bool = False) -> dict:
    """A short search of the tiny supernet on the toy data (global batch 16)."""
    torch.manual_seed(0)
    model = build(tiny_spec())
    if frozen_bn:  # BatchNorm on running statistics: the only per-process difference gone
        train = model.train

        def train_with_bn_frozen(mode=True):
            train(mode)
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eval()
            return model

        model.train = train_with_bn_frozen
    budget = Budget(model.spec, 0.5 * spec_cost(model.spec), alpha=5.0)
    trainer = Trainer(model, ClassificationTask(0.1), SearchConfig(**CFG), out,
                      terms=[create_method("pas", model, budget)], gate_lr=0.05, progress=False)
    trainer.fit(loader())
    return {"params": {k: v.detach().clone() for k, v in model.named_parameters()},
            "gates": [g.weight.detach().clone() for g in model.gate_modules() if g is not None],
            "history": trainer.history}


def _worker(rank: int, world: int, port: int, tmp: str, frozen_bn: bool = False) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.init_distributed()
    try:
        result = _search(os.path.join(tmp, "run"), frozen_bn)
        torch.save(result, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        distributed.shutdown()


def _two_processes(tmp, frozen_bn: bool) -> list[dict]:
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp), frozen_bn), nprocs=2, start_method="spawn")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_both_ranks_end_with_identical_gates_and_weights(tmp_path):
    torch.set_num_threads(1)
    ranks = _two_processes(tmp_path, frozen_bn=False)
    for k in ranks[0]["params"]:  # DDP keeps the replicas equal, bit for bit
        assert torch.equal(ranks[0]["params"][k], ranks[1]["params"][k]), k
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["gates"], ranks[1]["gates"]))
    assert [h["loss"] for h in ranks[0]["history"]] == [h["loss"] for h in ranks[1]["history"]]  # reduced
    assert (tmp_path / "run" / "checkpoint.pt").exists()  # written by rank 0


def test_two_processes_search_like_one_with_the_same_global_batch(tmp_path):
    """Each process takes half of every global batch, gradients and losses are averaged, so two
    processes compute what one does on the whole batch, up to float summation order: within
    1e-5 (measured 1.5e-7). BatchNorm is frozen here because it is the one thing that
    differs by design: each process normalises by its half-batch's statistics (no
    SyncBatchNorm on CPU), which moved the weights by up to 0.1 in this 12-step search."""
    torch.set_num_threads(1)
    two = _two_processes(tmp_path, frozen_bn=True)[0]
    one = _search(tmp_path / "one", frozen_bn=True)
    moved = 0.0
    torch.manual_seed(0)
    init = {k: v.detach() for k, v in build(tiny_spec()).named_parameters()}
    for k, v in one["params"].items():
        assert torch.allclose(v, two["params"][k], atol=1e-5, rtol=0), (k, float((v - two["params"][k]).abs().max()))
        moved = max(moved, float((v - init[k]).abs().max()))
    assert moved > 0.1  # the search did move the weights: the agreement is not trivial
    for a, b in zip(one["history"], two["history"]):
        assert abs(a["loss"] - b["loss"]) < 1e-5


def test_the_cli_runs_unchanged_under_torchrun(tmp_path):
    data = write_fake_fashion(tmp_path / "data", n_train=256)
    common = ["--data", str(data), "--run-dir", str(tmp_path / "run"), "--threads", "1", "--set",
              "train.batch_size=32", "--set", "search.batch_size=32"]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "repas"]
    assert main(["train", *common, "--epochs", "1"]) == 0
    done = subprocess.run(torchrun + ["search", *common, "--method", "pas", "--epochs", "1"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1 and done.stdout.count("epoch=1 ") == 1  # rank 0 alone logs
    report = json.loads((tmp_path / "run" / "search" / "report.json").read_text())
    assert report["searched_macs"] > 0 and len(report["history"]) == 1
    assert (tmp_path / "run" / "search" / "tb").is_dir()
    # a stage that runs in one process says so
    done = subprocess.run(torchrun + ["extract", *common], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0 and "runs in one process" in done.stderr


def test_the_shards_of_every_batch_make_up_the_one_process_batch():
    """Rank r of w gets the r-th part of the batch one process draws, augmentation included,
    for the classification loader and the SR patch loader."""
    import numpy as np
    from test_trainer import toy_data

    from repas.data import TensorLoader
    from repas.data.sr_images import PatchLoader, SRPair

    rng = np.random.default_rng(0)
    pairs = [SRPair(f"p{i}", rng.integers(0, 256, (96, 128, 3), dtype=np.uint8),
                    rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for i in range(3)]
    makers = [lambda: TensorLoader(toy_data(), 16, shuffle=True, augment=True, seed=3, drop_last=True),
              lambda: PatchLoader(pairs, 2, "y", patch=16, batch_size=8, batches_per_epoch=4, seed=3)]
    for make in makers:
        one = make()
        shards = [make() for _ in range(2)]
        for r, s in enumerate(shards):
            s.shard(r, 2)
        for epoch in (0, 1):
            for each in (one, *shards):
                each.set_epoch(epoch)
            whole, parts = list(one), [list(s) for s in shards]
            assert len(whole) == len(parts[0]) == len(parts[1]) > 0
            for b, (x, y) in enumerate(whole):
                assert torch.equal(torch.cat([parts[0][b][0], parts[1][b][0]]), x)
                assert torch.equal(torch.cat([parts[0][b][1], parts[1][b][1]]), y)
