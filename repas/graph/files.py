"""A pruned user model on disk without pickled code: ``pruned.json`` (how to build the dense
model, the input shape it was traced with, and each channel group's kept channels) plus
``weights.safetensors``.

Loading imports the builder by its dotted name (``"torchvision.models:resnet18"``,
``"timm:create_model"`` with ``{"model_name": "repvgg_a0"}``, or a function of your own
package), builds the dense model, traces its channel groups again, cuts the recorded
channels with Torch-Pruning and loads the weights: your model class is rebuilt by your own
code, so it must be importable where the model is loaded.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repas.atomic import atomic_write_json
from repas.errors import RepasError
from repas.graph.gated import GatedModel, prune_copy
from repas.graph.groups import channel_groups
from repas.supernet.model_files import load_weights, read_weights, save_weights

FORMAT = "repas-pruned-model/1"


def build_from(builder: str, kwargs: dict[str, Any]) -> nn.Module:
    """Call ``module:function`` with ``kwargs``."""
    module, sep, name = builder.partition(":")
    if not sep:
        raise RepasError(f"builder {builder!r} must look like 'package.module:function' (e.g. timm:create_model)")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise RepasError(f"cannot import the builder {builder!r} ({e}): the package that defines the model must be "
                         "installed where the model is loaded") from None
    return fn(**kwargs)


def save_pruned(model: nn.Module, directory: str | Path, gated: GatedModel, *, builder: str,
                kwargs: dict[str, Any] | None = None, masks: list[torch.Tensor] | None = None) -> Path:
    """Save ``model`` (extracted from ``gated`` at ``masks``, default: its gates; fine-tuned
    or not) so that ``load_pruned`` rebuilds it with ``builder(**kwargs)``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    masks = gated.masks() if masks is None else masks
    record = {"format": FORMAT, "builder": builder, "kwargs": kwargs or {},
              "input_shape": list(gated.example_inputs.shape), "task": gated.spec.task, "ignored": gated.ignored,
              "groups": [{"root": g.root, "size": g.size, "keep": torch.nonzero(m).flatten().tolist()}
                         for g, m in zip(gated.groups, masks)]}
    save_weights(model, directory / "weights.safetensors")
    atomic_write_json(directory / "pruned.json", record)
    return directory


def load_pruned(directory: str | Path) -> nn.Module:
    """The pruned model saved by ``save_pruned``, rebuilt by its builder and cut again."""
    directory = Path(directory)
    path = directory / "pruned.json"
    if not path.exists():
        raise RepasError(f"no pruned.json in {directory}: not a pruned user model (save_pruned writes one)")
    record = json.loads(path.read_text())
    if record.get("format") != FORMAT:
        raise RepasError(f"{path} is format {record.get('format')!r}; this repas reads {FORMAT}")
    dense = build_from(record["builder"], record["kwargs"]).eval()
    modules = dict(dense.named_modules())
    example = torch.zeros(record["input_shape"])
    groups, _ = channel_groups(dense, example, ignored_layers=[modules[n] for n in record["ignored"]])
    saved = {g["root"]: g for g in record["groups"]}
    if [g.root for g in groups] != list(saved) or any(g.size != saved[g.root]["size"] for g in groups):
        raise RepasError(f"{record['builder']}({record['kwargs']}) no longer has the channel groups it was saved "
                         "with: the model's code changed since")
    masks = []
    for g in groups:
        mask = torch.zeros(g.size, dtype=torch.bool)
        mask[saved[g.root]["keep"]] = True
        masks.append(mask)
    model = prune_copy(dense, example, groups, masks)
    path = directory / "weights.safetensors"
    load_weights(model, read_weights(path), str(path))
    return model.eval()
