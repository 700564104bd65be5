"""Error-tolerance search (Play-and-Prune): instead of a budget, the largest acceptable drop
of a validation metric, and the smallest net found within it.

The controller is independent of how a round prunes: ``tolerance_search`` walks a shrinking
schedule of targets, asks ``run_round(target)`` for the net at each one and its validation
metric, and returns the last round within the drop. The stages supply the rounds (PaS: a
few epochs of search at each target, continuing from the last; a baseline: its method at
each target, from the trained net).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class ToleranceRound:
    target: float
    cost: float  # of the extracted net
    widths: list[int]
    value: float  # its validation metric (higher is better: top-1, PSNR)
    drop: float  # reference - value
    within: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


RoundFn = Callable[[float], "tuple[list[int], float, float, Any] | None"]


def shrinking_targets(dense: float, shrink: float, floor: float) -> list[float]:
    """dense * shrink, dense * shrink^2, ... down to ``floor * dense``."""
    targets, t = [], dense * shrink
    while t >= floor * dense:
        targets.append(t)
        t *= shrink
    return targets


def tolerance_search(reference: float, targets: list[float], run_round: RoundFn, max_drop: float
                     ) -> tuple[Any, ToleranceRound | None, list[ToleranceRound]]:
    """Rounds at ``targets`` (decreasing) until one's metric drops more than ``max_drop``
    below ``reference``, the schedule ends, or a round cannot prune further.

    ``run_round(target)`` returns (widths, cost, validation metric, state) of the net it
    made, or None when the target cannot be met. Returns the state and the round of the
    last net within the drop (None, None when even the first round broke it) and every
    round run; the round after the returned one, if any, is the one that broke it."""
    rounds: list[ToleranceRound] = []
    best_state, best = None, None
    for k, target in enumerate(targets):
        out = run_round(target)
        if out is None:
            log.info(f"tolerance round {k + 1}: target {target:.6g} cannot be met; stopping")
            break
        widths, cost, value, state = out
        drop = reference - value
        r = ToleranceRound(target, cost, widths, value, drop, drop <= max_drop)
        rounds.append(r)
        log.info(f"tolerance round {k + 1}: target {target:.6g}, widths {widths}, validation {value:.4g} "
            f"(drop {drop:+.3g}, allowed {max_drop:g}) -> {'within' if r.within else 'broke it'}")
        if not r.within:
            break
        if best is not None and widths == best.widths:
            log.info("tolerance: the widths no longer shrink; stopping")
            break
        best_state, best = state, r
    return best_state, best, rounds
