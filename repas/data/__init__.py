"""Datasets held in memory as tensors, and the readers of their file formats."""

from repas.data.datasets import DATASETS, DatasetSplits, load_dataset
from repas.data.tensors import TensorImages, TensorLoader

__all__ = ["DATASETS", "DatasetSplits", "TensorImages", "TensorLoader", "load_dataset"]
