"""``python -m mmfinercam.cli``: the same commands as the ``mmfinercam`` console script."""

import sys

from . import main

sys.exit(main())
