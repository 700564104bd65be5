"""The pipeline's stages, each one public function that reads and writes model directories.

train -> search -> extract -> finetune -> fuse -> export. Every stage reads the directory
of the stage before it (``source``, by default ``<run_dir>/<previous stage>``) and writes
``spec.json`` + ``weights.safetensors`` + ``report.json`` + ``config.json`` into its own,
so any stage can be rerun or resumed alone. ``run_pipeline`` runs them all and writes
``report.md``; ``method_run`` runs every stage after training for another method, at
equal total epochs (``finetune_config``).
"""

from repas.stages.common import STAGES, cost_model, get_data, latency_table_path, stage_dir, width_step
from repas.stages.compare import method_config, method_run
from repas.stages.export import export_formats, export_shape, export_stage
from repas.stages.extract import extract_stage
from repas.stages.fuse import fuse_stage
from repas.stages.pipeline import run_pipeline
from repas.stages.profile import profile_stage
from repas.stages.search import search_stage
from repas.stages.targets import targets_stage
from repas.stages.training import finetune_config, finetune_stage, train_stage

__all__ = ["STAGES", "cost_model", "export_formats", "export_shape", "export_stage", "extract_stage",
           "finetune_config", "finetune_stage", "fuse_stage", "get_data", "latency_table_path", "method_config",
           "method_run", "profile_stage", "run_pipeline", "search_stage", "stage_dir", "targets_stage", "train_stage",
           "width_step"]
