"""``python -m pgsam_node`` = the ``pgsam-node`` command (used by tests and subprocesses)."""

import sys

from pgsam_node.cli import main

sys.exit(main())
