"""Does any runtime here turn unstructured zeros into speed? (issue 33, item 2: the verdict
before the unstructured pruning family is worth building for speed.)

For conv layers of the shapes repas nets have (and one wider), the weights are cut to each
``--sparsities`` level by magnitude (the smallest weights zeroed, unstructured), and every
runtime available here runs the layer, each timed alone in turn (``latency_each``: a new
session / program each round, the lowest of the rounds' medians), 1 thread, batch 1:

- onnxruntime (CPU EP), the conv with its zeros;
- ExecuTorch with XNNPACK (the .pte the bundles ship), the conv with its zeros;
- PyTorch eager, the dense conv with its zeros;
- PyTorch sparse: the conv as im2col (``F.unfold``) times the weight in CSR
  (``torch.sparse.mm``), the one sparse kernel torch runs on the CPU for this.

A cell is a runtime's time at a sparsity over the fastest runtime's time on the dense layer
(below 1: the zeros buy speed over what ships today). Writes OUT.json and OUT.md (default docs/sparse_runtime).

    OMP_WAIT_POLICY=PASSIVE python scripts/bench_sparse_runtime.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_harness import RowStore, header
from torch import nn

from repas.atomic import atomic_write_text
from repas.deploy import latency_each

SHAPES = {  # name: (c_in, c_out, kernel, height) at stride 1, "same" padding
    "3x3 64->64 at 28x28": (64, 64, 3, 28),
    "1x1 64->64 at 28x28": (64, 64, 1, 28),
    "3x3 256->256 at 14x14": (256, 256, 3, 14),
}


def magnitude_cut(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``w`` with its smallest-magnitude ``sparsity`` share of entries zeroed."""
    if sparsity <= 0:
        return w.clone()
    k = int(round(sparsity * w.numel()))
    threshold = w.abs().flatten().kthvalue(k).values
    return torch.where(w.abs() > threshold, w, torch.zeros_like(w))


class SparseConv(nn.Module):
    """A conv as im2col times a CSR weight matrix (torch's CPU sparse matmul)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.k, self.pad, self.c_out = conv.kernel_size[0], conv.padding[0], conv.out_channels
        self.weight = conv.weight.detach().flatten(1).to_sparse_csr()
        self.bias = conv.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols = F.unfold(x, self.k, padding=self.pad)[0]  # (c_in k k, positions)
        out = torch.sparse.mm(self.weight, cols) + self.bias[:, None]
        return out.view(1, self.c_out, x.shape[2], x.shape[3])


def factories(conv: nn.Conv2d, shape: tuple[int, ...], tmp: Path, name: str) -> dict[str, object]:
    from repas.deploy import export_onnx
    from repas.deploy.executorch_export import lower_to_pte
    from repas.deploy.runner import load_pte, onnx_session

    onnx = export_onnx(conv, shape, tmp / f"{name}.onnx")
    program = lower_to_pte(conv, (torch.randn(shape),))
    sparse = SparseConv(conv)

    def ort():
        s = onnx_session(onnx, 1)
        return lambda x: s.run(None, {"input": x})

    def pte():
        method = load_pte(program)
        return lambda x: method.execute([torch.from_numpy(x)])

    def eager():
        return lambda x: conv(torch.from_numpy(x))

    def csr():
        return lambda x: sparse(torch.from_numpy(x))

    return {"onnxruntime": ort, "ExecuTorch (XNNPACK)": pte, "PyTorch eager": eager, "PyTorch sparse CSR": csr}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sparsities", default="0,0.5,0.8,0.9,0.95")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--out", default="docs/sparse_runtime")
    args = p.parse_args()
    torch.set_num_threads(1)
    from repas.deploy.executorch_export import set_executorch_threads

    set_executorch_threads(1)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    out = Path(args.out)
    store = RowStore(out.with_suffix(".json"))
    store.doc.update(header=header("1 thread, batch 1"), rows=[])
    for label, (c_in, c_out, k, h) in SHAPES.items():
        torch.manual_seed(0)
        dense = nn.Conv2d(c_in, c_out, k, padding=k // 2).eval().requires_grad_(False)
        shape = (1, c_in, h, h)
        makers: dict[str, object] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for s in sparsities:
                conv = nn.Conv2d(c_in, c_out, k, padding=k // 2).eval().requires_grad_(False)
                conv.weight.copy_(magnitude_cut(dense.weight, s))
                conv.bias.copy_(dense.bias)
                for runtime, make in factories(conv, shape, Path(tmp), f"s{s:g}").items():
                    makers[f"{runtime}|{s:g}"] = make
            with torch.inference_mode():
                ms = latency_each(makers, shape, warmup=20, runs=args.runs, passes=5)
        best_dense = min(v for k, v in ms.items() if k.endswith("|0"))
        for key, value in ms.items():
            runtime, s = key.split("|")
            store.add({"layer": label, "runtime": runtime, "sparsity": float(s), "ms": value,
                       "vs_best_dense": value / best_dense, "vs_own_dense": value / ms[f"{runtime}|0"]})
        print(f"{label}: " + ", ".join(f"{k} {v:.3f}" for k, v in ms.items()), flush=True)
    runtimes = list(dict.fromkeys(r["runtime"] for r in store.rows))
    lines = [store.doc["header"], "", "Time at each sparsity over the fastest runtime's time on the dense layer "
             "(below 1: the zeros buy speed over what ships today); each runtime's own dense time in brackets.", "",
             "| layer | runtime | " + " | ".join(f"{s:g}" for s in sparsities) + " |",
             "|---|---|" + "---|" * len(sparsities)]
    for label in SHAPES:
        for runtime in runtimes:
            got = {r["sparsity"]: r for r in store.rows if r["layer"] == label and r["runtime"] == runtime}
            cells = [f"{got[s]['vs_best_dense']:.2f}" + (f" ({got[s]['ms']:.3f} ms)" if s == 0 else "")
                     for s in sparsities]
            lines.append(f"| {label} | {runtime} | " + " | ".join(cells) + " |")
    pays = [r for r in store.rows if r["sparsity"] > 0 and r["vs_best_dense"] < 0.95]
    lines += ["", "Where the zeros pay (5% or more under the fastest dense runtime): " + (", ".join(
        f"{r['runtime']} at {r['sparsity']:g} on {r['layer']} ({r['vs_best_dense']:.2f})" for r in pays) or "nowhere")
        + "."]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
