"""``python -m engine`` is the ``bgtransfer`` command."""

from engine.cli import run

run()
