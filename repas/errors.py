"""The one exception type a user sees as a one-line message (traceback with --debug)."""


class RepasError(Exception):
    """Bad input or a failed check: the message names what is wrong and how to fix it."""


class Interrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM stopped training between two steps, after a checkpoint was saved."""

    def __init__(self, signum: int, where: str) -> None:
        super().__init__(f"stopped by signal {signum} {where}")
        self.signum, self.where = signum, where
