"""``repas analyze DENSE PRUNED``: does a pruned net keep its dense parent's representations?

Both nets (model directories: a trained supernet, a searched or fine-tuned subnet) run the
same test images; every block's output is compared, every dense layer against every pruned
one, by linear CKA and, layer against same layer, by SVCCA (``repas.similarity``). Writes
``analyze.json``, ``analyze.md`` (the table) and ``analyze.png`` (the CKA heatmap) to OUT.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repas.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from repas.config import PipelineConfig
from repas.errors import RepasError
from repas.similarity import linear_cka, svcca
from repas.stages.common import get_data, setup
from repas.supernet import load_model

log = logging.getLogger("repas.stages")


@torch.no_grad()
def block_outputs(model: nn.Module, x: torch.Tensor, batch: int = 128) -> list[torch.Tensor]:
    """Every block's output (after its activation) on ``x``, on the CPU."""
    outs: list[list[torch.Tensor]] = [[] for _ in model.blocks]
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: outs[i].append(o.detach().float().cpu()))
             for i, b in enumerate(model.blocks)]
    try:
        model.eval()
        for part in x.split(batch):
            model(part)
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(o) for o in outs]


def analyze(dense: nn.Module, pruned: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """The CKA matrix (dense layers x pruned layers) and, per layer, CKA and SVCCA."""
    a, b = block_outputs(dense, x), block_outputs(pruned, x)
    matrix = [[linear_cka(u, v) for v in b] for u in a]
    rows = [{"layer": i, "dense_width": int(a[i].shape[1]), "pruned_width": int(b[i].shape[1]),
             "cka": matrix[i][i], "svcca": svcca(a[i], b[i])} for i in range(min(len(a), len(b)))]
    return {"images": len(x), "cka_matrix": matrix, "layers": rows}


def heatmap(result: dict[str, Any], title: str) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = torch.tensor(result["cka_matrix"])
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * m.shape[1], 1.0 + 0.5 * m.shape[0]))
    im = ax.imshow(m.numpy(), vmin=0, vmax=1, cmap="viridis")
    ax.set_xlabel("pruned net: block")
    ax.set_ylabel("dense net: block")
    ax.set_title(title, fontsize=9)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{float(m[i, j]):.2f}", ha="center", va="center", fontsize=7,
                    color="black" if m[i, j] > 0.6 else "white")
    fig.colorbar(im, ax=ax, label="linear CKA")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def _short(path: str | Path) -> str:
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def analyze_stage(cfg: PipelineConfig, dense_dir: str | Path, pruned_dir: str | Path, out: str | Path | None = None,
                  images: int = 512) -> Path:
    """``analyze`` on the first ``images`` test images of the configured data (for SR and
    denoising, training patches of the nets' size); writes OUT."""
    setup(cfg)
    dense, pruned = load_model(dense_dir).eval(), load_model(pruned_dir).eval()
    if len(dense.blocks) != len(pruned.blocks) or dense.spec.input_size != pruned.spec.input_size:
        raise RepasError(f"{pruned_dir} is not a pruned {dense_dir}: {len(pruned.blocks)} blocks at "
                         f"{pruned.spec.input_size} against {len(dense.blocks)} at {dense.spec.input_size}")
    data = get_data(cfg)
    if data.task_name == "classification":
        x, source = torch.cat([b[0] for b in data.eval_batches(cfg.finetune)])[:images], "test images"
    else:  # image-to-image test images differ in size: training patches of the nets' own size
        shape = (1, dense.spec.in_channels, *dense.spec.input_size)
        x, source = torch.cat(list(data.calibration_inputs(shape, images)))[:images], "training patches"
    if len(x) < 2:
        raise RepasError("repas analyze needs at least 2 images")
    result = analyze(dense, pruned, x)
    result.update(dense=str(dense_dir), pruned=str(pruned_dir), inputs=source)
    out = Path(out or Path(pruned_dir).parent / "analyze")
    atomic_write_json(out / "analyze.json", result)
    lines = [f"# Representations of {pruned_dir} against {dense_dir}", "",
             f"{result['images']} {source}; each block's output. Linear CKA of the whole feature maps, "
             "SVCCA of the channels (averaged over positions, 99% of the variance kept). 1 = the same "
             "representation (up to rotation and scale).", "",
             "| block | dense width | pruned width | linear CKA | SVCCA |", "|---|---|---|---|---|"]
    lines += [f"| {r['layer']} | {r['dense_width']} | {r['pruned_width']} | {r['cka']:.3f} | {r['svcca']:.3f} |"
              for r in result["layers"]]
    lines += ["", "![linear CKA, every dense block against every pruned block](analyze.png)"]
    atomic_write_text(out / "analyze.md", "\n".join(lines) + "\n")
    atomic_write_bytes(out / "analyze.png", heatmap(result, f"{_short(pruned_dir)} vs {_short(dense_dir)}"))
    per_block = ", ".join(f"{r['cka']:.2f}" for r in result["layers"])
    log.info(f"analyze: CKA per block {per_block} -> {out}")
    return out / "analyze.md"
