"""A pruned user model on disk without pickled code: ``pruned.json`` (how to build the dense
model, the input shape it was traced with, and each channel group's kept channels) plus
``weights.safetensors``.

Loading calls the builder by its dotted name (``"torchvision.models:resnet18"``,
``"timm:create_model"`` with ``{"model_name": "repvgg_a0"}``, or a function of your own
package), builds the dense model, traces its channel groups again, cuts the recorded
channels with Torch-Pruning and loads the weights: your model class is rebuilt by your own
code, so it must be importable where the model is loaded. A builder is code that runs:
only torchvision's, timm's and repas's load by default, any other only when the caller
trusts it (``repas.graph.builders``). Every field of ``pruned.json`` is checked before use.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repas.atomic import atomic_write_json, staged_directory
from repas.errors import RepasError
from repas.graph.builders import build_from, split_builder
from repas.graph.gated import GatedModel, prune_copy
from repas.graph.groups import channel_groups
from repas.json_files import MAX_CHANNELS, Fields, check_int, read_json
from repas.supernet.model_files import load_weights, read_weights, save_weights

FORMAT = "repas-pruned-model/1"


def save_pruned(model: nn.Module, directory: str | Path, gated: GatedModel, *, builder: str,
                kwargs: dict[str, Any] | None = None, masks: list[torch.Tensor] | None = None) -> Path:
    """Save ``model`` (extracted from ``gated`` at ``masks``, default: its gates; fine-tuned
    or not) so that ``load_pruned`` rebuilds it with ``builder(**kwargs)``."""
    directory = Path(directory)
    masks = gated.masks() if masks is None else masks
    record = {"format": FORMAT, "builder": builder, "kwargs": kwargs or {},
              "input_shape": list(gated.example_inputs.shape), "task": gated.spec.task, "ignored": gated.ignored,
              "groups": [{"root": g.root, "size": g.size, "keep": torch.nonzero(m).flatten().tolist()}
                         for g, m in zip(gated.groups, masks)]}
    with staged_directory(directory, carry=True) as staging:  # whole or not at all
        save_weights(model, staging / "weights.safetensors")
        atomic_write_json(staging / "pruned.json", record)
    return directory


def read_pruned_record(directory: str | Path) -> dict[str, Any]:
    """``pruned.json`` of ``directory``, every field checked (types, bounds, index ranges)
    before anything is built from it; a malformed field is one RepasError line."""
    path = Path(directory) / "pruned.json"
    if not path.exists():
        raise RepasError(f"no pruned.json in {directory}: not a pruned user model (save_pruned writes one)")
    f = Fields(read_json(path, fix="save the model again"), path, fix="save the model again with save_pruned")
    if f.obj.get("format") != FORMAT:
        raise RepasError(f"{path} is format {f.obj.get('format')!r:.40}; this repas reads {FORMAT}")
    split_builder(f.str("builder"))
    kwargs = f.json("kwargs", {})
    if not isinstance(kwargs, dict):
        f.fail("must be an object of keyword arguments", "kwargs")
    record = {"builder": f.obj["builder"], "kwargs": kwargs, "input_shape": f.shape("input_shape", 4),
              "task": f.str("task", default="classification"),
              "ignored": [check_str(v, f"{path}: ignored[{i}]") for i, v in enumerate(f.list("ignored", []))],
              "groups": []}
    for g in f.objects("groups"):
        size = g.int("size", 1, MAX_CHANNELS)
        keep = [check_int(k, f"{path}: {g.where}.keep[{j}]", 0, size - 1) for j, k in enumerate(g.list("keep"))]
        if not keep or len(set(keep)) != len(keep):
            g.fail("must list each kept channel once, at least one", "keep")
        record["groups"].append({"root": g.str("root"), "size": size, "keep": keep})
    return record


def check_str(value: Any, where: str) -> str:  # noqa: ANN401 (read from a file)
    if not isinstance(value, str):
        raise RepasError(f"{where} must be a string, got {value!r:.40}")
    return value


def load_pruned(directory: str | Path, *, trust_builder: bool = False, trusted_builders: Iterable[str] = ()
                ) -> nn.Module:
    """The pruned model saved by ``save_pruned``, rebuilt by its builder and cut again.

    The builder must be one repas loads by default (torchvision, timm, repas.models) unless
    ``trust_builder`` is set or ``trusted_builders`` names it (see ``repas.graph.builders``)."""
    directory = Path(directory)
    record = read_pruned_record(directory)
    path = directory / "pruned.json"
    dense = build_from(record["builder"], record["kwargs"], trust_builder=trust_builder,
                       trusted_builders=trusted_builders).eval()
    modules = dict(dense.named_modules())
    unknown = [n for n in record["ignored"] if n not in modules]
    if unknown:
        raise RepasError(f"{path}: ignored names {unknown[:3]}, which {record['builder']} does not have; "
                         "save the model again with save_pruned")
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
