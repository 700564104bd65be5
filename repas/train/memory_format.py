"""Whether training may run in channels_last (NHWC) on this device without a wrong gradient.

oneDNN's 1x1-convolution backward-weights kernel for AVX2 CPUs (the one PyTorch 2.14 calls
for an NHWC input) mishandles a strided 1x1 convolution with fewer input channels than its
block of 8 (oneDNN issue #6035): measured here with torch 2.14.1 on an AVX2 EPYC, 2 to 7
input channels at stride 2 give weight gradients about 100% wrong, a heap corruption or a
hang, depending on the shape and the thread count. Searched nets have such layers (a
4-channel layer before a stride-2 block with a 1x1 branch, a pruned ResNet downsample), so
the trainer checks for them and trains those nets in the default memory format instead.
On an AVX2 CPU the limit is the measured one (fewer than 8 input channels a group); on any
other CPU, where it was not measured, it is the AVX-512 kernel block (fewer than 16). It
costs speed only, on the nets it matches.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def nhwc_min_inputs() -> int:
    """Input channels a group a strided 1x1 convolution needs to train right in NHWC on this
    CPU: oneDNN's kernel block, 8 on AVX2 (measured), 16 elsewhere (not measured: the AVX-512 block)."""
    return 8 if torch.backends.cpu.get_cpu_capability() == "AVX2" else 16


def nhwc_unsafe_convs(model: nn.Module, min_inputs: int | None = None) -> list[str]:
    """Names of the convolutions whose NHWC weight gradient oneDNN may get wrong on this CPU:
    1x1 kernels with a stride, and from 2 to ``min_inputs - 1`` input channels per group (one
    input channel measured right)."""
    low = nhwc_min_inputs() if min_inputs is None else min_inputs
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
            and 1 < m.in_channels // m.groups < low]


def channels_last_is_safe(model: nn.Module, device: torch.device) -> tuple[bool, list[str]]:
    """(whether ``model`` may train in channels_last on ``device``, the convolutions that forbid it)."""
    unsafe = nhwc_unsafe_convs(model) if device.type == "cpu" else []
    return not unsafe, unsafe


def channels_last_or_say_why(model: nn.Module, device: torch.device) -> bool:
    """Whether ``model`` trains in channels_last on ``device``; where a convolution forbids it,
    a warning names it and the net trains in the default memory format (slower, exact)."""
    safe, unsafe = channels_last_is_safe(model, device)
    if not safe:
        log.warning(f"channels_last is off for this net: oneDNN's NHWC backward of a strided 1x1 convolution "
                    f"with under {nhwc_min_inputs()} input channels is wrong on some CPUs ({', '.join(unsafe)}); "
                    "it trains in the default memory format (slower, exact)")
    return safe
