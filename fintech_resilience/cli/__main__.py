"""``python -m fintech_resilience.cli``: the same as the ``fintech-resilience`` command."""

import sys

from .commands import main

sys.exit(main())
