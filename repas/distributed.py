"""Several processes, one run: PyTorch's own distributed engine, started by ``torchrun``.

``init_distributed()`` joins the process group that ``torchrun`` describes in the
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): nccl on GPUs, gloo on CPUs.
Everything else asks ``rank()`` / ``world_size()`` / ``is_main()``; in a single process
they answer 0 / 1 / True and ``barrier`` and ``all_reduce_sum`` do nothing, so the same
code runs with and without ``torchrun``.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from repas.errors import RepasError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """This process's device: its local GPU under nccl; in one process the GPU only when
    REPAS_DEVICE=cuda asks for it (opt-in until the GPU paths have run on a GPU); else the CPU."""
    if is_distributed():
        nccl = dist.get_backend() == "nccl"
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if nccl else torch.device("cpu")
    wanted = os.environ.get("REPAS_DEVICE") == "cuda" and torch.cuda.is_available()
    return torch.device("cuda") if wanted else torch.device("cpu")


def init_distributed(backend: str | None = None) -> bool:
    """Join the process group torchrun set up (True), or do nothing outside torchrun (False)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RepasError(f"WORLD_SIZE is set but {', '.join(missing)} not: launch with "
                         "'torchrun --nproc-per-node N -m repas ...'")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    return True


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    """The sums of ``values`` over all processes."""
    return _all_reduce(values, dist.ReduceOp.SUM)


def all_reduce_max(values: list[float]) -> list[float]:
    """The largest of each of ``values`` over all processes."""
    return _all_reduce(values, dist.ReduceOp.MAX)


def _all_reduce(values: list[float], op: dist.ReduceOp) -> list[float]:
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=op)
    return t.tolist()


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()
