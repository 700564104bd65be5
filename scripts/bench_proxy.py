"""Does eagleeye's proxy predict what a width allocation is worth after fine-tuning?

``eagleeye`` ranks candidate allocations by how far their outputs (BatchNorm recalibrated)
stay from the dense net's, before any training. This script takes one trained dense
supernet, runs eagleeye's candidate search at a MACs budget (or ``--metric latency``: the
latency the config's search.latency_table predicts), picks ``--candidates``
allocations spread over the proxy's range (the uniform allocation and the proxy's choice
among them), fine-tunes each with the same recipe (the config's finetune, ``--epochs``,
same seed) and reports the rank correlation (Spearman) between the proxy and the final
accuracy, beside the correlation of a short-training proxy: the accuracy after the first
of those epochs. Rows are saved as they finish (RUN/proxy-<budget>.json): a stopped run
resumes.

``--replicates N`` fine-tunes every candidate N more times with other seeds (data order and
augmentation; the inherited weights are the same), and asks whether the allocations differ
at all beyond that noise: a one-way ANOVA over the runs, the rank correlation between the
first run and the mean of the others, and the winner's curse: the candidate best in the
first run, scored by the other runs only, against the uniform allocation scored the same way.

    python scripts/bench_proxy.py --run runs/pareto-fmnist_plain_medium/seed-0 --config configs/fmnist.yaml \\
        --name fmnist_medium --budget 0.25 --epochs 4 --set data.train_subset=15000 --set threads=2
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from bench_harness import RowStore, header

from repas import stages
from repas.atomic import atomic_write_json, atomic_write_text
from repas.config import load_config
from repas.errors import RepasError
from repas.search import Budget, analytic_cost, create_method, extract_subnet, resolve_target
from repas.search.allocation import top_k_mask
from repas.search.methods.magnitude import l1_scores
from repas.stages.common import cost_model, setup
from repas.stages.methods import sample_inputs
from repas.supernet import load_model
from repas.train import Trainer


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = (np.argsort(np.argsort(x)).astype(float) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def finetune_cut(dense: torch.nn.Module, scores: list[torch.Tensor], widths: list[int], tcfg, data, out: Path,
                 seed: int) -> tuple[torch.nn.Module, list[float]]:
    """Cut ``widths`` from ``dense`` (each layer keeping its top-``scores`` channels) and
    train the cut net with ``tcfg`` (data order and augmentation seeded by ``seed``); the
    trained net and its curve of the primary metric, one value per evaluation."""
    torch.manual_seed(seed)
    net = extract_subnet(dense, [top_k_mask(s, w) for s, w in zip(scores, widths)])
    trainer = Trainer(net, data.task(tcfg, net.spec), tcfg, out, progress=False)
    loader = data.train_loader(tcfg)
    loader.seed = seed
    trainer.fit(loader, data.eval_batches(tcfg))
    key = f"val_{data.primary}"
    return net, [h[key] for h in trainer.history if key in h]


def replicate_stats(rows: list[dict], others: dict[tuple, list[float]]) -> dict:
    """Do the candidates differ beyond the noise of fine-tuning one of them again?"""
    from scipy.stats import f_oneway

    runs = [[r["final"], *others[tuple(r["widths"])]] for r in rows]
    f, p = f_oneway(*runs)
    best = max(rows, key=lambda r: r["final"])
    uniform = next(r for r in rows if r["uniform"])
    return {"runs": min(len(x) for x in runs), "anova_f": float(f), "anova_p": float(p),
            "within_std": float(np.sqrt(np.mean([np.var(x, ddof=1) for x in runs]))),
            "between_std": float(np.std([np.mean(x) for x in runs], ddof=1)),
            "spearman_rerun": spearman([r["final"] for r in rows], [float(np.mean(others[tuple(r["widths"])]))
                                                                      for r in rows]),
            "best": " / ".join(map(str, best["widths"])), "best_first": best["final"],
            "best_others": float(np.mean(others[tuple(best["widths"])])),
            "uniform_others": float(np.mean(others[tuple(uniform["widths"])]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a run directory holding the trained dense supernet (RUN/train)")
    p.add_argument("--config", required=True)
    p.add_argument("--name", required=True, help="names docs/proxy_<name>_<budget>.md and .json")
    p.add_argument("--budget", type=float, default=0.25, help="fraction of the dense cost (--metric)")
    p.add_argument("--metric", choices=("macs", "latency"), default="macs",
                   help="the budget's cost: MACs, or latency predicted by search.latency_table (--set)")
    p.add_argument("--candidates", type=int, default=10)
    p.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs of every candidate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replicates", type=int, default=0,
                   help="fine-tune every candidate this many more times, with seeds SEED + 1000 r")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--docs", default="docs")
    args = p.parse_args()
    if args.replicates < 0:
        p.error(f"--replicates is how many more runs of each candidate (0 or more), got {args.replicates}")
    run = Path(args.run)
    cfg = load_config(args.config, [*args.set, f"run_dir={run}", f"seed={args.seed}"])
    setup(cfg)
    data = stages.get_data(cfg)
    dense = load_model(run / "train").eval()
    tag = f"{args.budget:g}" if args.metric == "macs" else f"latency-{args.budget:g}"
    done_path = run / f"proxy-{tag}.json"
    try:  # a missing latency table or a budget out of range: say so, without a traceback
        cost = cost_model(cfg, dense.spec, args.metric)
        budget = Budget(dense.spec, resolve_target(dense.spec, args.metric, fraction=args.budget, model=cost),
                        args.metric, model=cost)
    except RepasError as e:
        p.error(str(e))
    store = RowStore(done_path)
    saved = store.doc
    if "candidates" not in saved:
        torch.manual_seed(args.seed)
        method = create_method("eagleeye", dense, budget, step=cfg.extract.round_to, tolerance=cfg.extract.tolerance)
        method.select(sample_inputs(dense, data, method.input_count))
        tried = method.tried
        order = sorted(range(len(tried)), key=lambda i: tried[i]["divergence"])
        picks = {0, order[0]} | {order[round(q * (len(order) - 1))]
                                 for q in np.linspace(0, 1, max(2, args.candidates - 2))}
        macs = analytic_cost(dense.spec, "macs")
        saved.update(candidates=[dict(tried[i], macs=float(macs(tried[i]["widths"])), uniform=i == 0,
                                      chosen=i == order[0]) for i in sorted(picks)], tried=len(tried))
        store.save()
    scores = l1_scores(create_method("l1-layer", dense, budget))  # eagleeye's channel ranking
    tcfg = dataclasses.replace(cfg.finetune, epochs=args.epochs, eval_every=1)
    for rep in range(args.replicates + 1):
        ft_seed = args.seed + 1000 * rep
        for cand in saved["candidates"]:
            if any(r["widths"] == cand["widths"] and r.get("replicate", 0) == rep for r in saved["rows"]):
                continue
            started = time.perf_counter()
            name = "-".join(map(str, cand["widths"])) + (f"-r{rep}" if rep else "")
            # the first run's curve gives the after-one-epoch proxy; a replicate needs only its end
            rcfg = tcfg if rep == 0 else dataclasses.replace(tcfg, eval_every=0)
            _, curve = finetune_cut(dense, scores, cand["widths"], rcfg, data, run / "proxy" / name, ft_seed)
            store.add({**cand, "replicate": rep, "curve": curve, "final": curve[-1],
                       "seconds": time.perf_counter() - started})
            print(f"{cand['widths']} run {rep}: divergence {cand['divergence']:.4f}, after 1 epoch {curve[0]:.2f}, "
                  f"final {curve[-1]:.2f}", flush=True)
    extra = [r for r in saved["rows"] if r.get("replicate", 0) > 0]
    saved["rows"] = [r for r in saved["rows"] if r.get("replicate", 0) == 0]
    rows = sorted(saved["rows"], key=lambda r: r["divergence"])
    final = [r["final"] for r in rows]
    score = data.primary

    def cost_text(c: float) -> str:
        return f"{c / 1e6:.3f} M" if args.metric == "macs" else f"{c:.1f}"

    rho_proxy = spearman([-r["divergence"] for r in rows], final)
    rho_short = spearman([r["curve"][0] for r in rows], final)
    lines = [header(f"dense net {run / 'train'}") + "\n",
             f"{args.budget:g} x dense {args.metric}; {len(rows)} of eagleeye's {saved['tried']} candidates, each "
             f"fine-tuned {args.epochs} epochs (finetune recipe, seed {args.seed}).\n",
             f"Spearman rank correlation with the final {score}: eagleeye's proxy (lower divergence = better) "
             f"{rho_proxy:+.2f}; {score} after the first epoch {rho_short:+.2f}.\n",
             f"| widths | {'MACs' if args.metric == 'macs' else 'predicted ms'} | divergence (eagleeye's proxy) | "
             f"{score} after 1 epoch | final {score} | note |"
             + (" other runs | mean of the other runs |" if extra else ""),
             "|---|---|---|---|---|---|" + ("---|---|" if extra else "")]
    others = {tuple(r["widths"]): [e["final"] for e in extra if e["widths"] == r["widths"]] for r in rows}
    for r in rows:
        note = ", ".join(n for n, on in (("uniform", r["uniform"]), ("eagleeye's choice", r["chosen"])) if on)
        more = others[tuple(r["widths"])]
        lines.append(f"| {' / '.join(map(str, r['widths']))} | {cost_text(r['cost'])} | {r['divergence']:.4f} | "
                     f"{r['curve'][0]:.2f} | {r['final']:.2f} | {note} |"
                     + (f" {', '.join(f'{v:.2f}' for v in more)} | {np.mean(more):.2f} |" if extra else ""))
    stats = replicate_stats(rows, others) if extra else {}
    if stats:
        lines += ["", f"Replicates ({stats['runs']} runs of each candidate): one-way ANOVA of the final {score} over "
                  f"the candidates F = {stats['anova_f']:.2f}, p = {stats['anova_p']:.3f}; spread of one candidate's "
                  f"runs (pooled std) {stats['within_std']:.2f}, of the candidates' means {stats['between_std']:.2f}; "
                  f"rank correlation between the first run and the mean of the others {stats['spearman_rerun']:+.2f}. "
                  f"Winner's curse: the best candidate of the first run ({stats['best']}, {stats['best_first']:.2f}) "
                  f"scores {stats['best_others']:.2f} on the other runs, uniform {stats['uniform_others']:.2f} "
                  f"(difference {stats['best_others'] - stats['uniform_others']:+.2f})."]
    text = "\n".join(lines) + "\n"
    name = f"proxy_{args.name}_{tag}"
    atomic_write_text(Path(args.docs) / f"{name}.md", text)
    atomic_write_json(Path(args.docs) / f"{name}.json", {**saved, "rows": saved["rows"] + extra,
                                                          "spearman_proxy": rho_proxy,
                                                          "spearman_first_epoch": rho_short, **stats})
    print(text)


if __name__ == "__main__":
    main()
