"""How well a user model's latency table (``repas profile`` on a ``model.builder`` config)
predicts its pruned nets: random group widths, each net cut from the dense model
(``GatedModel.extract``), BatchNorm folded, exported and timed in the same rounds as the
others (interleaved, one process), against ``GraphLatencyModel``'s prediction.

    OMP_WAIT_POLICY=PASSIVE python scripts/bench_user_latency.py --config configs/resnet18_fmnist.yaml

Writes OUT.json (every net: widths, predicted and measured ms) and OUT.md (MAPE, worst).
The table is kept beside them (OUT.csv) and reused when present.
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

import torch
from bench_harness import header

from repas.atomic import atomic_write_json, atomic_write_text
from repas.config import load_config
from repas.deploy.profile import time_models
from repas.deploy.profile_parts import module_job
from repas.graph import GatedModel, fuse_user_model
from repas.graph.builders import build_from
from repas.latency_table import LatencyTable
from repas.search.graph_latency import GraphLatencyModel
from repas.stages import profile_stage
from repas.stages.common import get_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/resnet18_fmnist.yaml")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--nets", type=int, default=20)
    p.add_argument("--points", type=int, default=8, help="profile.points: channel counts per side")
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="OUT.json / OUT.md / OUT.csv (default docs/user_latency_BACKEND)")
    args = p.parse_args()
    out = Path(args.out or f"docs/user_latency_{args.backend}")
    cfg = load_config(args.config, [f"profile.backend={args.backend}", f"profile.points={args.points}",
                                    f"profile.passes={args.passes}", "export.threads=1"])
    torch.set_num_threads(1)
    table_path = out.with_suffix(".csv")
    if not table_path.is_file():
        profile_stage(cfg, table_path)
    table = LatencyTable.load(table_path)
    data = get_data(cfg)
    m = cfg.model
    example = torch.randn(data.example_shape())
    gated = GatedModel(build_from(m.builder, m.kwargs or {}).eval(), example, name=m.builder)
    predict = GraphLatencyModel(table, gated.costs, gated.spec.widths, str(table_path), m.builder)
    rng = random.Random(args.seed)
    nets = {"dense": gated.spec.widths}
    for i in range(args.nets):  # each group at 20-100% of its channels, a multiple of 4 where it can be
        nets[f"net{i:02d}"] = [max(1, min(s, 4 * round(s * rng.uniform(0.2, 1.0) / 4))) for s in gated.spec.widths]
    jobs = {}
    for name, widths in nets.items():
        masks = [torch.arange(s) < w for s, w in zip(gated.spec.widths, widths)]
        jobs[name] = module_job(fuse_user_model(gated.extract([k.float() for k in masks])), example, args.backend,
                                threads=1, warmup=cfg.profile.warmup, runs=max(1, cfg.profile.runs // args.passes))
    measured = time_models({}, lambda parts: 0.0, passes=args.passes, extra=jobs)
    rows = [{"net": n, "widths": w, "predicted_ms": float(predict(w)), "measured_ms": measured[n]}
            for n, w in nets.items()]
    errors = [abs(r["predicted_ms"] / r["measured_ms"] - 1) for r in rows if r["net"] != "dense"]
    doc = {"header": header(f"{table.meta.get('backend')}, 1 thread"),
           "backend": table.meta.get("backend"), "model": m.builder, "table_rows": len(table),
           "mape": statistics.fmean(errors), "worst": max(errors), "rows": rows}
    atomic_write_json(out.with_suffix(".json"), doc)
    lines = [doc["header"], "",
             f"{m.builder}: {len(table)} table rows; {len(errors)} random pruned nets: MAPE "
             f"{100 * doc['mape']:.1f}%, worst {100 * doc['worst']:.1f}%", "",
             "| net | group widths | predicted ms | measured ms | error |", "|---|---|---|---|---|"]
    lines += [f"| {r['net']} | {'/'.join(map(str, r['widths']))} | {r['predicted_ms']:.3f} | {r['measured_ms']:.3f} | "
              f"{100 * (r['predicted_ms'] / r['measured_ms'] - 1):+.1f}% |" for r in rows]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines[:3]))


if __name__ == "__main__":
    main()
