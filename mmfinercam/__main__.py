"""``python -m mmfinercam``: the same commands as the ``mmfinercam`` console script."""

import sys

from .cli import main

sys.exit(main())
