"""Float vs int8, per runtime, of one or more exported bundles: a markdown table of the
test metrics and latencies recorded in each bundle's model.json by `repas export`.

    python scripts/bundle_table.py runs/fmnist/export runs/sr_x2/export
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RUNTIME = {"onnx": "onnxruntime", "pte": "ExecuTorch (XNNPACK)"}  # how the table names them


def rows(bundle: Path) -> list[str]:
    m = json.loads((bundle / "model.json").read_text())
    metric = "top1" if m["task"] == "classification" else "psnr"
    unit = "top-1 %" if metric == "top1" else "PSNR dB"
    size = "x".join(map(str, m["input"]["shape"][2:]))
    out = []
    for fmt, files in m["files"].items():
        runtime = {"onnx": "onnxruntime", "pte": "executorch"}[fmt]
        f = m["metrics"][f"{fmt} float"][metric]
        t = m["latency_ms"][runtime]["float"]
        for precision in files:
            v, ms = m["metrics"][f"{fmt} {precision}"][metric], m["latency_ms"][runtime][precision]
            out.append(f"| {bundle} | {RUNTIME[fmt]} | {precision} | {unit} {v:.2f} ({v - f:+.2f}) | "
                       f"{ms:.3f} ms at {size} | {t / ms:.2f}x |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", nargs="+", type=Path)
    args = p.parse_args()
    lines = ["| bundle | runtime | precision | test metric (vs float) | latency, batch 1 | speed-up |",
             "|---|---|---|---|---|---|"]
    for b in args.bundles:
        lines += rows(b)
    first = json.loads((args.bundles[0] / "model.json").read_text())["latency_protocol"]
    print("\n".join(lines))
    print(f"\n{first['device']}, {first['threads']} thread(s), {first['statistic']}.")


if __name__ == "__main__":
    main()
