"""Ctrl-C and SIGTERM during training: stop between two steps, never inside a write."""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopSignals:
    """While caught, SIGINT / SIGTERM only set ``received``, which the training loop honours
    after the current step (it saves a checkpoint, then stops); a second Ctrl-C stops at
    once. Only the main thread can own signal handlers: elsewhere nothing is caught."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def catch(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            # a second Ctrl-C stops at once; repeated SIGTERMs (a launcher forwarding the
            # scheduler's notice, then its own) must not abort the checkpoint being saved
            if self.received is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.received = self.received or signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, handler)

    def restore(self) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous = {}
