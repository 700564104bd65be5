"""The pipeline's summary: dense against searched net, as JSON and as report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repas.config import PipelineConfig
from repas.search import LatencyModel
from repas.search.cost import format_cost
from repas.spec import ArchSpec
from repas.stages.common import environment, latency_table_path, read_report


def summarize(cfg: PipelineConfig, latency: dict[str, dict[str, float]], seconds: float, primary: str,
              baseline: dict[str, float] | None = None, compared: dict[str, Path] | None = None) -> dict[str, Any]:
    """The run's numbers: dense and searched net (and each compared method's, from its
    export directory in ``compared``), ``latency`` measured for each in one process."""
    run = Path(cfg.run_dir)
    search, extract = read_report(run / "search"), read_report(run / "extract")

    table = latency_table_path(cfg)

    def row(export_dir: Path, which: str) -> dict[str, Any]:
        export = read_report(export_dir)
        trained = read_report(export_dir.parent / ("train" if which == "dense" else "finetune"))
        predicted = None
        if table.exists():
            spec = ArchSpec.load(export_dir)
            predicted = float(LatencyModel.load(table, spec)(spec.widths))
        return {"widths": export["widths"], "macs": export["macs"], "params": export["params"],
                "torch": trained["test"][primary], "onnx": export["onnx_metrics"][primary],
                "onnx_ms": latency[which]["median_ms"], "predicted_ms": predicted,
                "epochs": trained.get("config", {}).get("epochs"),
                "metrics": export.get("metrics", {}), "latency_ms": export.get("latency_ms", {}),
                "layer_precision": export.get("checks", {}).get("pte_int8_layer_precision"),
                "weight_density": None if which == "dense" else _extract_report(export_dir).get("weight_density")}

    return {
        "run_dir": str(run), "seconds": seconds, "environment": environment(), "metric": primary,
        "target": extract["target"], "cost_metric": extract["metric"], "cost_vs_target": extract["cost_vs_target"],
        "method": search.get("method", cfg.search.method), "search_end_widths": search["widths"],
        "threshold_widths": extract["threshold_widths"],
        "warnings": list(dict.fromkeys(search.get("warnings", []) + extract.get("warnings", []))),
        "dense": row(run / "dense-export", "dense"),
        "searched": row(run / "export", "searched"),
        "compared": {m: row(d, m) for m, d in (compared or {}).items()},
        "baseline": baseline, "threads": cfg.export.threads,
        "latency_input": read_report(run / "export")["latency_input"],
        "tolerance": search.get("tolerance"),
        "weight_density": extract.get("weight_density"),  # an unstructured method's non-zero conv weights
    }


def _bundle_cell(row: dict[str, Any], fmt: str, runtime: str, precision: str, metric: str) -> str:
    """A bundle file's test metric and latency in the report ("-" where it was not made)."""
    key = f"{fmt} {precision}"
    if key not in row.get("metrics", {}):
        return "-"
    return f"{row['metrics'][key][metric]:.2f}, {row['latency_ms'][runtime][precision]:.3f} ms"


def _extract_report(export_dir: Path) -> dict[str, Any]:
    path = export_dir.parent / "extract"
    return read_report(path) if (path / "report.json").exists() else {}


def _macs_cell(r: dict[str, Any]) -> str:
    """MACs, and for an unstructured method's net its non-zero weights (no runtime skips the rest)."""
    cell = f"{r['macs'] / 1e6:.3f} M"
    return cell if r.get("weight_density") is None else f"{cell} ({r['weight_density']:.0%} of weights non-zero)"


def _compared_markdown(s: dict[str, Any], metric: str) -> str:
    """The searched net beside the methods run at the same budget and total epochs."""
    nets = {f"{s.get('method', 'pas')} (this run)": s["searched"], **s["compared"]}
    lines = ["The same budget and total epochs from the same dense net, other methods choosing the widths "
             "(`search.compare`):", "",
             f"| method | widths | MACs | {metric}, fused ONNX | ONNX latency | fine-tune epochs |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {' / '.join(map(str, r['widths']))} | {_macs_cell(r)} | {r['onnx']:.2f} | "
              f"{r['onnx_ms']:.3f} ms | {r.get('epochs', '-')} |" for name, r in nets.items()]
    return "\n".join(lines)


def _pte_latency_markdown(b: dict[str, Any], key: str, metric: str) -> str:
    """Under ``search.pte_latency``: the shipped .pte files at the measured budget, float
    against int8, timed interleaved."""
    cal = b["calibration"]
    lines = [f"Latency budget: {b['fraction']:g} x the dense float net's .pte ({cal['budget_ms']:.4f} ms of "
             f"{cal['dense_float_ms']:.4f} ms, measured before the subnets trained; uniform widths at "
             f"{', '.join(f'{v:g} x the MACs in {p}' for p, v in cal['choice'].items())}). The shipped .pte "
             "files, timed now, interleaved in one process:", "",
             f"| net | precision | widths | {metric}, .pte | .pte latency | x dense float |",
             "|---|---|---|---|---|---|"]
    for name, n in b["nets"].items():
        score = n["metrics"].get(key)
        lines.append(f"| {'**' + name + ' (shipped)**' if name == 'searched' else name} | {n['precision']} | "
                     f"{' / '.join(map(str, n['widths'] or []))} | {'-' if score is None else f'{score:.2f}'} | "
                     f"{n['ms']:.4f} ms | {n['vs_dense_float']:.2f} |")
    return "\n".join(lines)


def summary_markdown(s: dict[str, Any]) -> str:
    d, p = s["dense"], s["searched"]
    metric = {"top1": "top-1 (%)", "psnr": "PSNR (dB, Y)"}.get(s["metric"], s["metric"])
    size = "x".join(map(str, s["latency_input"][2:]))
    rows = [
        ("widths", " / ".join(map(str, d["widths"])), " / ".join(map(str, p["widths"]))),
        ("MACs", f"{d['macs'] / 1e6:.3f} M", f"{p['macs'] / 1e6:.3f} M ({p['macs'] / d['macs']:.1%} of dense)"),
        ("params", f"{d['params'] / 1e3:.1f} K", f"{p['params'] / 1e3:.1f} K"),
        (f"{metric}, PyTorch", f"{d['torch']:.2f}", f"{p['torch']:.2f}"),
        (f"{metric}, fused ONNX", f"{d['onnx']:.2f}", f"{p['onnx']:.2f}"),
        (f"ONNX latency, batch 1 at {size}, {s['threads']} thread", f"{d['onnx_ms']:.3f} ms",
         f"{p['onnx_ms']:.3f} ms"),
    ]
    for fmt, runtime, name in (("onnx", "onnxruntime", "ONNX"), ("pte", "executorch", "ExecuTorch")):
        for precision in ("float", "int8"):
            if (fmt, precision) != ("onnx", "float") and f"{fmt} {precision}" in p.get("metrics", {}):
                rows.append((f"{metric} and latency, {name} {precision}",
                             *(_bundle_cell(r, fmt, runtime, precision, s["metric"]) for r in (d, p))))
    if s.get("weight_density") is not None:
        rows.insert(2, ("non-zero conv weights (no runtime here skips them)", "100%", f"{s['weight_density']:.1%}"))
    if d.get("predicted_ms") is not None:
        rows.append(("latency predicted by the table", f"{d['predicted_ms']:.3f} ms", f"{p['predicted_ms']:.3f} ms"))
    env = s["environment"]
    lines = [f"# repas run {s['run_dir']}", "",
             f"{env['date']}, {env['processor']}, torch {env['torch']}, {s['seconds'] / 60:.1f} min in all. "
             f"Widths chosen by method {s.get('method', 'pas')}. Target {s['cost_metric']} "
             f"{format_cost(s['target'], s['cost_metric'])}; the searched net is at "
             f"{s['cost_vs_target']:.3f} x target.",
             "",
             "| | dense | searched |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    if s.get("pte_latency"):
        lines += ["", _pte_latency_markdown(s["pte_latency"], s["metric"], metric)]
    if s.get("compared"):
        lines += ["", _compared_markdown(s, metric)]
    t = s.get("tolerance")
    if t:
        got, broke = t["accepted"], t["broke"]
        text = (f"Error-tolerance search: the smallest net whose validation {t['metric']} (after each round's recovery "
                f"epochs, before fine-tuning) "
                f"stays within {t['max_drop']:g} of the dense net's {t['reference']:.2f}, in "
                f"{len(t['rounds'])} rounds: ")
        text += (f"{got['value']:.2f} (drop {got['drop']:.2f}) at {format_cost(got['cost'], s['cost_metric'])}"
                 if got else "no round stayed within it, so the net is the dense one")
        if broke:
            text += (f"; the next round, at {format_cost(broke['cost'], s['cost_metric'])}, dropped "
                     f"{broke['drop']:.2f}")
        lines += ["", text + "."]
    layers = p.get("layer_precision")
    if layers:
        kept = [n for n, v in layers.items() if v == "float"]
        lines += ["", f"The int8 .pte runs {len(layers) - len(kept)} of its {len(layers)} layers in int8" +
                  (f"; in float: {', '.join(kept)}." if kept else " (every layer).")]
    slow = [f"{runtime} ({t['int8']:.3f} ms against {t['float']:.3f} ms)"
            for runtime, t in p.get("latency_ms", {}).items()
            if "int8" in t and "float" in t and t["int8"] >= t["float"]]
    if slow:
        lines += ["", f"int8 is not faster than float in {', '.join(slow)} for the searched net: ship float there "
                  "(model.json's recommended_precision says so)."]
    if s.get("warnings"):
        lines += ["", "**Warnings:**", ""] + [f"- {w}" for w in s["warnings"]]
    if s.get("baseline"):
        lines += ["", "Bicubic upscaling on the same images: " +
                  ", ".join(f"{k} {v:.4f}" for k, v in s["baseline"].items()) + "."]
    return "\n".join(lines) + "\n"
