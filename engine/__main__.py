"""``python -m engine`` is the ``bgtransfer`` command."""

import sys

from engine.cli import main

sys.exit(main())
