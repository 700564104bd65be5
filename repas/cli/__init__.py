"""The command-line interface; it mirrors the public API."""

from repas.cli.main import main

__all__ = ["main"]
