"""The builder of a user model, named in a file as ``"package.module:function"``, and
which builders repas calls without being told to trust them.

A builder is code that runs. A name read from a file (``pruned.json``, a run's recorded
``config.json``) must not choose what runs, so only the model builders of
``torchvision.models`` (and its detection / segmentation / video / optical-flow /
quantization submodules), ``timm:create_model`` with a registered model name, and the
builders in ``repas.models`` load by default. They are checked by exact module and name
before anything is imported, their keyword arguments must be plain JSON data, and they
may not fetch pretrained weights (weights come from the safetensors file). Any other
builder loads only when the user trusts it: ``trust_builder=True`` in Python,
``--trust-builder`` on the command line, or its exact name in ``model.trusted_builders``
of the user's own config (never of a recorded one).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from typing import Any

from torch import nn

from repas.errors import RepasError
from repas.json_files import check_json_value

_TORCHVISION = ("torchvision.models", "torchvision.models.detection", "torchvision.models.segmentation",
                "torchvision.models.video", "torchvision.models.optical_flow", "torchvision.models.quantization")
TRUSTED_MODULES = (*_TORCHVISION, "timm", "repas.models")
# keyword arguments that make a trusted builder fetch or read weights of its own
_WEIGHT_KWARGS = {"weights", "weights_backbone", "pretrained", "pretrained_backbone", "checkpoint_path",
                  "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict", "cache_dir"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _how_to_trust(builder: str) -> str:
    return (f"builder {builder!r} is not one repas loads by default (torchvision.models, timm:create_model, "
            "repas.models): a builder "
            "named in a file is code that runs; if you trust it, pass trust_builder=True (Python), "
            "--trust-builder (CLI), or list it under model.trusted_builders in your own config")


def split_builder(builder: Any) -> tuple[str, str]:  # noqa: ANN401 (read from a file)
    """(module, function) of ``"package.module:function"``; anything else is a RepasError."""
    if not isinstance(builder, str):
        raise RepasError(f"a builder is a string 'package.module:function', got {builder!r:.60}")
    module, sep, name = builder.partition(":")
    if not sep or not _NAME.fullmatch(module) or not _NAME.fullmatch(name) or "." in name:
        raise RepasError(f"builder {builder!r:.80} must look like 'package.module:function' "
                         "(e.g. torchvision.models:resnet18 or timm:create_model)")
    return module, name


def _check_trusted(module: str, name: str, kwargs: dict[str, Any], builder: str) -> None:
    """Raise unless ``module:name(**kwargs)`` is a model builder repas calls by default."""
    if module not in TRUSTED_MODULES:
        raise RepasError(_how_to_trust(builder))
    fetch = sorted(k for k, v in kwargs.items() if k in _WEIGHT_KWARGS and v not in (None, False))
    if fetch:
        raise RepasError(f"builder {builder!r} with {', '.join(fetch)}: a model named in a file may not fetch or "
                         "read weights of its own (its weights are the safetensors file); drop those arguments")
    if module in _TORCHVISION:
        import torchvision.models

        if name not in torchvision.models.list_models(module=importlib.import_module(module)):
            raise RepasError(f"{builder!r}: {module} has no model builder {name!r} "
                             "(torchvision.models.list_models() lists them)")
    elif module == "timm":
        import timm

        model_name = kwargs.get("model_name")
        if name != "create_model" or not isinstance(model_name, str) or not timm.is_model(model_name):
            raise RepasError(f"{builder!r}: from timm repas calls create_model with a registered model_name "
                             f"(timm.list_models() lists them), got {name} with model_name={model_name!r:.60}")
    else:
        import repas.models

        if name not in repas.models.__all__:
            raise RepasError(f"{builder!r}: repas.models has no builder {name!r}; it has "
                             f"{', '.join(repas.models.__all__)}")


def build_from(builder: str, kwargs: dict[str, Any] | None = None, *, trust_builder: bool = False,
               trusted_builders: Iterable[str] = ()) -> nn.Module:
    """The model ``builder(**kwargs)`` returns, once the builder is one repas loads by default
    or the caller trusts it (``trust_builder``, or its exact name in ``trusted_builders``)."""
    module, name = split_builder(builder)
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict):
        raise RepasError(f"the keyword arguments of builder {builder!r} must be a mapping, got {kwargs!r:.60}")
    check_json_value(kwargs, f"the keyword arguments of builder {builder!r}")
    if not trust_builder and builder not in set(trusted_builders):
        _check_trusted(module, name, kwargs, builder)
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise RepasError(f"cannot import the builder {builder!r} ({e}): the package that defines the model must be "
                         "installed where the model is loaded") from None
    try:
        model = fn(**kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise RepasError(f"builder {builder!r} failed with {kwargs} ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(model, nn.Module):
        raise RepasError(f"builder {builder!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
