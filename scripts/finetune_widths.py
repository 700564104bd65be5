"""Fine-tune given width allocations from trained dense supernets, and time them beside references.

Does an allocation that won in one dense net (``bench_proxy.py``) win in others? Each
``--widths`` allocation is cut from each ``--run``'s dense net (RUN/train; each layer keeps
its highest filter-L1 channels, as eagleeye and bench_proxy cut), fine-tuned with the
config's finetune recipe for ``--epochs`` (seeded by the run's ``--seeds`` entry), fused and
exported to ONNX. Then every exported net and every ``--reference`` ONNX file is timed in
one process (``onnx_latency_each``: each alone, alternating rounds, lowest of the rounds'
medians). Rows are saved as they finish (OUT/rows.json): a stopped run resumes.

    python scripts/finetune_widths.py --config configs/sr_x2_plain.yaml \\
        --run runs/pareto-sr_x2_steps/seed-1 --run runs/pareto-sr_x2_steps/seed-2 --seeds 1,2 \\
        --widths 24,16,8,16,16,4 --epochs 24 --out runs/fixed-widths \\
        --reference m4c16=runs/sr-steps-scratch/seed-0/export/model.onnx \\
        --set train.minutes=0 --set finetune.minutes=0 --set threads=2
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_harness import RowStore, header, seed_list  # noqa: E402
from bench_proxy import finetune_cut  # noqa: E402

from repas import stages  # noqa: E402
from repas.config import load_config  # noqa: E402
from repas.deploy import export_onnx, onnx_latency_each  # noqa: E402
from repas.errors import RepasError  # noqa: E402
from repas.search import create_method  # noqa: E402
from repas.search.methods.magnitude import l1_scores  # noqa: E402
from repas.stages.common import setup  # noqa: E402
from repas.stages.export import export_shape  # noqa: E402
from repas.supernet import fuse_repnet, load_model  # noqa: E402


def parse_widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write one allocation as comma-separated channel counts, "
                                         "e.g. 24,16,8,16,16,4") from None
    if any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"{text!r}: every width must be at least 1")
    return widths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--run", action="append", required=True, help="run directory with a dense net (RUN/train)")
    p.add_argument("--seeds", required=True, type=seed_list, help="one seed per --run, comma-separated")
    p.add_argument("--widths", action="append", required=True, type=parse_widths,
                   help="one allocation, e.g. 24,16,8,16,16,4 (repeatable)")
    p.add_argument("--epochs", type=int, required=True, help="fine-tuning epochs of every net")
    p.add_argument("--out", required=True, help="folder for the nets and rows.json")
    p.add_argument("--reference", action="append", default=[], help="NAME=model.onnx timed beside them")
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    seeds = args.seeds
    if args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}")
    if len(seeds) != len(args.run):
        p.error(f"{len(args.run)} --run but {len(seeds)} --seeds: give one seed per run")
    refs = dict(r.split("=", 1) for r in args.reference if "=" in r)
    if len(refs) != len(args.reference):
        p.error("--reference takes NAME=PATH, e.g. m4c16=runs/scratch/export/model.onnx")
    missing = [r for r in args.run if not (Path(r) / "train").is_dir()] + [v for v in refs.values()
                                                                               if not Path(v).is_file()]
    if missing:
        p.error(f"not found: {', '.join(missing)} (a --run needs RUN/train; a --reference an ONNX file)")
    out = Path(args.out)
    rows_path = out / "rows.json"
    store = RowStore(rows_path)
    rows = store.rows
    for run, seed in zip(args.run, seeds):
        for widths in args.widths:
            done = [r for r in rows if r["run"] == run and r["widths"] == widths]
            if done and done[0]["epochs"] != args.epochs:
                p.error(f"{rows_path} holds {widths} from {run} fine-tuned {done[0]['epochs']} epochs, not "
                        f"{args.epochs}: use another --out, or the same --epochs to resume")
            if done:
                continue
            try:
                cfg = load_config(args.config, [*args.set, f"run_dir={run}", f"seed={seed}"])
                setup(cfg)
                data = stages.get_data(cfg)
                dense = load_model(Path(run) / "train").eval()
            except RepasError as e:
                p.error(str(e))
            if len(widths) != len(dense.spec.layers):
                p.error(f"--widths {widths} has {len(widths)} entries; {run}'s net has {len(dense.spec.layers)} layers")
            started = time.perf_counter()
            scores = l1_scores(create_method("l1-layer", dense, target=0.5))
            tcfg = dataclasses.replace(cfg.finetune, epochs=args.epochs, eval_every=0)
            name = "-".join(map(str, widths))
            net, curve = finetune_cut(dense, scores, widths, tcfg, data, out / f"seed-{seed}" / name, seed)
            onnx = out / f"seed-{seed}" / name / "model.onnx"
            shape = export_shape(cfg, net.spec)
            export_onnx(fuse_repnet(net.eval()), shape, onnx)
            store.add({"run": run, "seed": seed, "widths": widths, "epochs": args.epochs, "metric": data.primary,
                       "value": curve[-1], "shape": list(shape), "onnx": str(onnx),
                       "seconds": time.perf_counter() - started})
            print(f"{run} {widths}: {data.primary} {curve[-1]:.3f}", flush=True)
    paths = {**refs, **{f"{'/'.join(map(str, r['widths']))} (seed {r['seed']})": r["onnx"] for r in rows}}
    if not rows:
        return
    shape, metric = tuple(rows[0]["shape"]), rows[0]["metric"]
    threads = load_config(args.config, args.set).export.threads
    measured = onnx_latency_each(paths, shape, threads=threads)
    print(f"\n{header(f'onnxruntime, batch 1 at {shape}, {threads} thread, lowest of 5 sessions medians')}\n")
    print(f"| net | {metric} | measured latency |\n|---|---|---|")
    for k in refs:
        print(f"| {k} (reference) | | {measured[k]:.1f} ms |")
    for r in rows:
        k = f"{'/'.join(map(str, r['widths']))} (seed {r['seed']})"
        print(f"| {k} | {r['value']:.2f} | {measured[k]:.1f} ms |")


if __name__ == "__main__":
    main()
