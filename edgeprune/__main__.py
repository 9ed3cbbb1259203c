"""``python -m edgeprune`` is the ``edgeprune`` command."""

import sys

from edgeprune.cli import main

sys.exit(main())
