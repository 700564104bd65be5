"""The trainer's tensorboard log: rank 0 writes it, other processes get a writer of nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter


class _NoWriter:
    """Tensorboard on ranks other than 0: writes nothing."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def open_writer(log_dir: Path, updates: int, main: bool) -> SummaryWriter | _NoWriter:
    """A tensorboard writer in ``log_dir`` that continues at update ``updates`` (a resumed run
    drops what a killed one logged past its checkpoint); on ranks other than 0, none."""
    return SummaryWriter(str(log_dir), purge_step=updates or None) if main else _NoWriter()
