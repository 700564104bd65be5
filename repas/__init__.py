"""repas: Pruning-as-Search with structural reparameterization.

The five-minute API::

    spec = repas.create_supernet_spec("repvgg-fmnist")   # a search space
    model = repas.build(spec)                            # supernet with BinaryGates
    budget = repas.Budget(spec, repas.resolve_target(spec, "macs", fraction=0.5))
    ...train with repas.Trainer(model, task, cfg, run_dir, budget=budget)...
    sub = repas.extract_subnet(model)                    # gates -> smaller net, same outputs
    plain = repas.fuse_net(sub)                          # one conv per block
    repas.save_model(plain, "out/")                      # spec.json + weights.safetensors
    repas.export_onnx(plain, (1, 1, 28, 28), "out/model.onnx")
"""

import importlib
from typing import Any

# Public names and the modules that hold them. Imported on first use, so that
# `import repas.deploy` (say, on a device) does not pull in training code.
_EXPORTS = {
    "PipelineConfig": "repas.config", "load_config": "repas.config",
    "export_onnx": "repas.deploy", "onnx_latency": "repas.deploy", "verify_onnx": "repas.deploy",
    "export_models": "repas.deploy", "predict": "repas.deploy", "load_runner": "repas.deploy",
    "RepasError": "repas.errors",
    "RepBlock": "repas.reparam", "fuse": "repas.reparam",
    "Budget": "repas.search", "Trainer": "repas.search", "cost": "repas.search", "extract_subnet": "repas.search",
    "resolve_target": "repas.search", "spec_cost": "repas.search", "LatencyModel": "repas.search",
    "allocate_masks": "repas.search", "LatencyTable": "repas.latency_table", "profile": "repas.deploy.profile",
    "profile_stage": "repas.stages", "targets_stage": "repas.stages",
    "ArchSpec": "repas.spec", "LayerSpec": "repas.spec",
    "export_stage": "repas.stages", "extract_stage": "repas.stages", "finetune_stage": "repas.stages",
    "fuse_stage": "repas.stages", "run_pipeline": "repas.stages", "search_stage": "repas.stages",
    "train_stage": "repas.stages",
    "BinaryGate": "repas.supernet", "RepNet": "repas.supernet", "build": "repas.supernet",
    "create_supernet_spec": "repas.supernet", "fuse_net": "repas.supernet", "list_spaces": "repas.supernet",
    "load_model": "repas.supernet", "save_model": "repas.supernet", "with_branches": "repas.supernet",
    "ClassificationTask": "repas.tasks",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'repas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__version__ = "0.1.0"

__all__ = sorted(_EXPORTS)
