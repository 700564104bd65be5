"""The statistics and the markdown table of ``bench_headroom_int8.py``: a one-way ANOVA over
the candidates, the rank correlation between a first run and the others, the winner's
curse, and the best float net at the same latency."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
from bench_proxy import spearman


def stats(doc: dict[str, Any]) -> dict[str, Any] | None:
    """ANOVA, rerun rank correlation and winner's curse over the int8 candidates run twice or more."""
    from scipy.stats import f_oneway

    runs: dict[str, dict[int, float]] = {}
    for r in doc["rows"]:
        runs.setdefault(r["label"], {})[r["rep"]] = r["top1"]
    full = {k: v for k, v in runs.items() if len(v) >= 2}
    if len(full) < 3:
        return None
    full = {k: v for k, v in full.items() if not k.endswith(" float")}  # the headroom is among the int8 nets
    labels = list(full)
    f, p = f_oneway(*[list(full[k].values()) for k in labels])
    first = [full[k][min(full[k])] for k in labels]
    others = [statistics.fmean([v for rep, v in full[k].items() if rep != min(full[k])]) for k in labels]
    best = labels[int(np.argmax(first))]
    uniform = next((k for k in labels if k.startswith("uniform") and k.endswith(" int8")), None)
    means = {k: statistics.fmean(full[k].values()) for k in labels}
    return {"candidates": len(labels), "anova_f": float(f), "anova_p": float(p),
            "within_std": float(np.sqrt(np.mean([np.var(list(full[k].values()), ddof=1) for k in labels]))),
            "between_std": float(np.std(list(means.values()), ddof=1)),
            "spearman_rerun": spearman(first, others), "best_first": best,
            "best_others": others[labels.index(best)],
            "uniform": uniform, "uniform_others": others[labels.index(uniform)] if uniform else None,
            "best_mean": max(means, key=means.get), "means": means}


def table(doc: dict[str, Any], budget: float) -> str:
    """The markdown of a headroom run at ``budget`` x the dense float .pte latency."""
    meta = doc["meta"]
    lines = [f"# Headroom in width x precision at {budget:g}x the dense float .pte latency "
             "(`scripts/bench_headroom_int8.py`)", "",
             f"{meta['date']}, {meta['cpu']}, torch {meta['torch']}, ExecuTorch {meta['executorch']}, 1 thread. "
             "Commands, in order: " + "; then ".join(f"`{c}`" for c in meta.get("commands", [meta["command"]])), "",
             f"Dense float .pte: {doc['pool']['dense_float_ms']:.4f} ms; {len(doc['pool']['rows'])} pool nets timed "
             "interleaved in one process.", "",
             "| candidate | precision | widths | latency (x dense float) | .pte top-1, per run | mean |",
             "|---|---|---|---|---|---|"]
    for c in doc["candidates"]:
        got = sorted((r for r in doc["rows"] if r["label"] == c["label"]), key=lambda r: r["rep"])
        vals = [r["top1"] for r in got]
        shown = f"{', '.join(f'{v:.2f}' for v in vals)} | {statistics.fmean(vals):.2f}" if vals else "- | -"
        lines.append(f"| {c['label']} | {c['precision']} | {'/'.join(map(str, c['widths']))} | {c['ratio']:.3f} | "
                     f"{shown} |")
    s = stats(doc)
    if s:
        lines += ["", f"One-way ANOVA over {s['candidates']} candidates: F = {s['anova_f']:.2f}, p = "
                  f"{s['anova_p']:.3f}; within-candidate std {s['within_std']:.2f}, between-candidate std of "
                  f"means {s['between_std']:.2f}. Rank correlation, first run against the others' mean: "
                  f"{s['spearman_rerun']:+.2f}.",
                  f"Winner's curse: best in the first run, `{s['best_first']}`, scores {s['best_others']:.2f} in "
                  f"the other runs, against {s['uniform_others']:.2f} for `{s['uniform']}`."]
    runs: dict[str, list[float]] = {}
    for r in doc["rows"]:
        runs.setdefault(r["label"], []).append(r["top1"])
    floats = {k: statistics.fmean(v) for k, v in runs.items() if k.endswith(" float")}
    if floats:
        best = max(floats, key=floats.get)
        lines += ["", f"Against the best float net at this latency (`{best}`, mean {floats[best]:.2f} over "
                  f"{len(runs[best])} run(s)): " +
                  "; ".join(f"`{k}` {statistics.fmean(v) - floats[best]:+.2f}" for k, v in runs.items()
                            if k not in floats) + "."]
    return "\n".join(lines) + "\n"
