"""Plain PyTorch models of the kind users bring, shipped as worked examples of searching the
widths of a model repas did not build (``repas.graph``)."""

from repas.models.resnet import resnet18_small
from repas.models.unet import UNet

__all__ = ["UNet", "resnet18_small"]
