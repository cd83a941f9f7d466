"""``python -m llink`` is the ``llink`` command."""

import sys

from llink.cli import main

sys.exit(main())
