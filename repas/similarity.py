"""How alike two nets' representations are, layer by layer: linear CKA and SVCCA.

- Linear CKA (Kornblith et al. 2019) of features X (n x p) and Y (n x q) of the same n
  inputs: ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` for the column-centred
  features, computed through the n x n Gram matrices so that whole feature maps (channels x
  positions) can be compared. 1: the same up to rotation and scale; 0: unrelated.
- SVCCA (Raghu et al. 2017, the seed's study): each layer's channels (its features averaged
  over positions, one "neuron" a channel), reduced by SVD to the directions holding 99% of
  the variance, then the mean of the canonical correlations between the two subspaces.

Pure torch, float64. ``repas analyze`` applies them to a dense net and a pruned one.
"""

from __future__ import annotations

import torch


def _centered_gram(x: torch.Tensor) -> torch.Tensor:
    x = x.flatten(1).double()
    x = x - x.mean(0, keepdim=True)
    return x @ x.t()


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two feature batches (the same inputs, any trailing shapes)."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"CKA compares features of the same inputs (at least 2): got {len(x)} and {len(y)}")
    k, lk = _centered_gram(x), _centered_gram(y)
    hsic = (k * lk).sum()
    norm = (k * k).sum().sqrt() * (lk * lk).sum().sqrt()
    return float(hsic / norm) if norm > 0 else 0.0


def _reduced(x: torch.Tensor, keep: float) -> torch.Tensor:
    """The centred columns projected on the top singular directions holding ``keep`` of the variance."""
    x = x.double()
    x = x - x.mean(0, keepdim=True)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    energy = torch.cumsum(s ** 2, 0) / (s ** 2).sum().clamp_min(1e-300)
    k = int((energy < keep).sum()) + 1
    return u[:, :k] * s[:k]


def svcca(x: torch.Tensor, y: torch.Tensor, keep: float = 0.99) -> float:
    """Mean canonical correlation of the SVD-reduced channels of ``x`` and ``y`` ((n, c, ...)
    feature maps are averaged over positions first)."""
    if x.dim() > 2:
        x = x.flatten(2).mean(2)
    if y.dim() > 2:
        y = y.flatten(2).mean(2)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"SVCCA compares features of the same inputs (at least 2): got {len(x)} and {len(y)}")
    qx, _ = torch.linalg.qr(_reduced(x, keep))
    qy, _ = torch.linalg.qr(_reduced(y, keep))
    rho = torch.linalg.svdvals(qx.t() @ qy).clamp(0, 1)
    return float(rho.mean())
