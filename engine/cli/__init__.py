"""The ``bgtransfer`` command line: a client of the public API."""

from engine.cli.entry import main, run

__all__ = ["main", "run"]
