"""The table of ``coverage_models.py``: its results JSON and markdown, rewritten atomically
after each model, and the library versions its header names (a module of its own so that
the walk stays one purpose)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def versions() -> dict:
    """The versions of the libraries the walk compares, for the header."""
    from importlib.metadata import version

    names = ("torch", "torchvision", "timm", "torch-pruning", "onnxruntime", "repas")
    found = {}
    for n in names:
        try:
            found[n] = version(n)
        except Exception:  # noqa: BLE001
            found[n] = "missing"
    return found


def write_table(results: dict, meta: dict, out: Path, checks: dict[str, Any]) -> None:
    """``checks``: what every model went through (target, methods, max_rel_err, max_macs_err,
    tp_ratio), for the header."""
    from repas.atomic import atomic_write_json, atomic_write_text

    target, methods, tp_ratio = checks["target"], checks["methods"], checks["tp_ratio"]

    atomic_write_json(out.with_suffix(".json"), {"meta": meta, "models": results})
    rows = list(results.values())
    lines = [f"# Coverage: repas's GatedModel beside Torch-Pruning ({meta['date']})", "",
             f"- command: `{meta['command']}`", f"- CPU: {meta['cpu']} (one thread a model)",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
             f"- repas: gate, extract at {target}x MACs with {' and '.join(methods)}, output equal to the gated "
             f"model within {checks['max_rel_err']:g} relative, MACs within {checks['max_macs_err']:.0%} of torch's "
             "flop counter, "
             "save_pruned / load_pruned, fused ONNX export checked in onnxruntime. Random weights and BatchNorm "
             "statistics, batch of 2 at the input shown.",
             f"- Torch-Pruning: MetaPruner, magnitude importance (p=2), channel ratio {tp_ratio:.3f} (1 - sqrt"
             f"({target})), classifier ignored; ok = it runs and the pruned model forwards to the same output shape.",
             ""]
    for source in ("torchvision", "timm"):
        part = sorted((r for r in rows if r.get("source") == source), key=lambda r: r["model"])
        if not part:
            continue
        ok_r = sum(r.get("repas") == "ok" for r in part)
        ok_t = sum(r.get("tp") == "ok" for r in part)
        both = sum(r.get("repas") == "ok" and r.get("tp") == "ok" for r in part)
        lines += [f"## {source}: repas {ok_r} / {len(part)} ok, Torch-Pruning {ok_t} / {len(part)} ok "
                  f"({both} both)", "",
                  "| model | input | repas | Torch-Pruning | rel err (uniform / l1-layer) | MACs analytic / counted "
                  "| MACs kept (uniform / l1-layer / TP) | seconds (repas / TP) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in part:
            def fmt(key: str, field: str, spec: str, r: dict = r) -> str:
                v = (r.get(key) or {}).get(field) if key != "tp" else r.get("tp_macs_fraction")
                return "-" if v is None else format(v, spec)
            ratio = [(r.get(m) or {}).get("macs_ratio") for m in methods]
            ratio_s = " / ".join("-" if v is None else f"{v:.4f}" for v in ratio)
            size = "x".join(str(s) for s in r.get("input", [])[1:]) or "-"
            lines.append(f"| {r['model']} | {size} | {_cell(r.get('repas'))} | {_cell(r.get('tp'))} | "
                         f"{fmt('uniform', 'rel_err', '.1e')} / {fmt('l1-layer', 'rel_err', '.1e')} | {ratio_s} | "
                         f"{fmt('uniform', 'macs_fraction', '.2f')} / {fmt('l1-layer', 'macs_fraction', '.2f')} / "
                         f"{fmt('tp', '', '.2f')} | {r.get('repas_seconds', '-')} / {r.get('tp_seconds', '-')} |")
        lines.append("")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))


def _cell(text: str | None) -> str:
    return "-" if text is None else text.replace("|", "/")[:220]
