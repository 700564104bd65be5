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

from repas.config import PipelineConfig, load_config
from repas.deploy import export_onnx, onnx_latency, verify_onnx
from repas.errors import RepasError
from repas.reparam import RepBlock, fuse
from repas.search import Budget, Trainer, cost, extract_subnet, resolve_target, spec_cost
from repas.spec import ArchSpec, LayerSpec
from repas.stages import (
                          export_stage,
                          extract_stage,
                          finetune_stage,
                          fuse_stage,
                          run_pipeline,
                          search_stage,
                          train_stage,
)
from repas.supernet import (
                          BinaryGate,
                          RepNet,
                          build,
                          create_supernet_spec,
                          fuse_net,
                          list_spaces,
                          load_model,
                          save_model,
)
from repas.tasks import ClassificationTask

__version__ = "0.1.0"

__all__ = [
    "ArchSpec", "BinaryGate", "Budget", "ClassificationTask", "LayerSpec", "PipelineConfig", "RepBlock", "RepNet",
    "RepasError", "Trainer", "build", "cost", "create_supernet_spec", "export_onnx", "export_stage",
    "extract_stage", "extract_subnet", "finetune_stage", "fuse", "fuse_net", "fuse_stage", "list_spaces",
    "load_config", "load_model", "onnx_latency", "resolve_target", "run_pipeline", "save_model", "search_stage",
    "spec_cost", "train_stage", "verify_onnx",
]
