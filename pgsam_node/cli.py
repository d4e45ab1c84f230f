"""``pgsam-node`` command line.

Each sub-command lives in ``pgsam_node/commands/<name>.py`` with a ``register(subparsers)``
function; modules there are discovered. Every command takes ``--config FILE``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import logging
import sys

from pgsam_node import __version__
from pgsam_node import commands
from pgsam_node.errors import NodeError


def command_modules() -> list[str]:
    """Every module in ``pgsam_node/commands`` that defines ``register`` (sorted by name)."""
    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_"))
    return [f"pgsam_node.commands.{n}" for n in names]

log = logging.getLogger("pgsam_node.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgsam-node", description="PG-SAM DICOM clinical node")
    parser.add_argument("--version", action="version", version=f"pgsam-node {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in command_modules():
        mod = importlib.import_module(name)
        if hasattr(mod, "register"):
            mod.register(sub)
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
    except BrokenPipeError:
        # `pgsam-node status | head`: the reader went away; not an error of ours.
        _quiet_stdout()
        return 0
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
    return int(rc or 0)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush raises nothing more."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
