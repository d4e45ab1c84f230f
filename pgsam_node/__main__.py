"""``python -m pgsam_node`` = the ``pgsam-node`` command (used by tests and subprocesses)."""

import sys

from pgsam_node.prebind import bind_early

# `serve` with acceptor worker processes: the DICOM port listens before the CLI, the settings
# model and the rest of the node are imported (see pgsam_node.prebind).
bind_early()

from pgsam_node.cli import main  # noqa: E402

sys.exit(main())
