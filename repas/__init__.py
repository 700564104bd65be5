"""repas: Pruning-as-Search with structural reparameterization.

The five-minute API (a plain PyTorch loop; see the README's "Python API")::

    model = repas.create_model("repvgg-fmnist")          # a supernet: blocks + BinaryGates
    method = repas.create_method("l1", model, target=0.5)  # any registered method, 50% of the MACs
    ...your loop: loss = task_loss + method.penalty(); ...; method.after_step(step)
    sub = method.extract()                               # its choice -> a smaller net, same outputs
    ...fine-tune sub...
    plain = repas.fuse(sub)                              # one conv per block, spec updated
    repas.save_model(plain, "out/")                      # spec.json + weights.safetensors
    repas.export_models(plain, "out/", (1, 1, 28, 28), ["onnx"])   # checked against PyTorch

``repas.Trainer`` and the stage functions (``run_pipeline`` ...) are built on the same API.
"""

import importlib
from typing import Any

# Public names and the modules that hold them. Imported on first use, so that
# `import repas.deploy` (say, on a device) does not pull in training code.
_EXPORTS = {
    "PipelineConfig": "repas.config", "load_config": "repas.config",
    "export_onnx": "repas.deploy", "onnx_latency": "repas.deploy", "export_models": "repas.deploy",
    "export_bundle": "repas.deploy",
    "predict": "repas.deploy", "load_runner": "repas.deploy", "profile": "repas.deploy.profile",
    "RepasError": "repas.errors",
    "RepBlock": "repas.reparam",
    "Budget": "repas.search", "cost": "repas.search", "extract_subnet": "repas.search",
    "resolve_target": "repas.search", "spec_cost": "repas.search", "LatencyModel": "repas.search",
    "allocate_masks": "repas.search", "PruningMethod": "repas.search", "create_method": "repas.search",
    "list_methods": "repas.search", "register_method": "repas.search",
    "LatencyTable": "repas.latency_table",
    "ArchSpec": "repas.spec", "LayerSpec": "repas.spec",
    "export_stage": "repas.stages", "extract_stage": "repas.stages", "finetune_stage": "repas.stages",
    "fuse_stage": "repas.stages", "run_pipeline": "repas.stages", "search_stage": "repas.stages",
    "train_stage": "repas.stages", "profile_stage": "repas.stages", "targets_stage": "repas.stages",
    "BinaryGate": "repas.supernet", "RepNet": "repas.supernet", "build": "repas.supernet",
    "create_model": "repas.supernet", "create_supernet_spec": "repas.supernet", "fuse": "repas.supernet",
    "from_timm_repvgg": "repas.supernet", "list_spaces": "repas.supernet", "load_model": "repas.supernet",
    "save_model": "repas.supernet", "with_branches": "repas.supernet", "register_space": "repas.supernet",
    "Trainer": "repas.train",
    "ClassificationTask": "repas.tasks", "SuperResolutionTask": "repas.tasks.super_resolution",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'repas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__version__ = "0.1.0"

__all__ = sorted(_EXPORTS)
