"""``pgsam-node`` command line.

Each sub-command lives in ``pgsam_node/commands/<name>.py`` with a ``register(subparsers)``
function; add the module to :data:`COMMAND_MODULES`. Every command takes ``--config FILE``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import NodeError

COMMAND_MODULES = [
    "pgsam_node.commands.config_cmd",
    "pgsam_node.commands.train_cmd",
    "pgsam_node.commands.evaluate_cmd",
    "pgsam_node.commands.synth_cmd",
    "pgsam_node.commands.geometry_cmd",
]

log = logging.getLogger("pgsam_node.cli")


def add_config_arg(p: argparse.ArgumentParser) -> None:
    """The ``--config FILE`` option every command shares."""
    p.add_argument("--config", "-c", metavar="FILE", default=None, help="YAML configuration file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgsam-node", description="PG-SAM DICOM clinical node")
    parser.add_argument("--version", action="version", version=f"pgsam-node {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except NodeError as exc:
        print(f"pgsam-node: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
