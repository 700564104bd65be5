"""The one exception type a user sees as a one-line message (traceback with --debug)."""


class RepasError(Exception):
    """Bad input or a failed check: the message names what is wrong and how to fix it."""
