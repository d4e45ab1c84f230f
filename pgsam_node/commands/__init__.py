"""Sub-commands of ``pgsam-node``; one module per command group."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from pgsam_node.config import Settings, load_settings
from pgsam_node.logsetup import setup_logging


def load(args) -> Settings:
    """Load settings from ``args.config`` (or ``PGSAM_CONFIG``) and set up logging from them.

    Without either, the built-in defaults are used (storage under ``./storage``): a warning on
    stderr says so, because a forgotten ``--config`` otherwise shows an empty node.
    """
    path = getattr(args, "config", None) or os.environ.get("PGSAM_CONFIG") or None
    if path is None:
        print("pgsam-node: warning: no --config FILE and no PGSAM_CONFIG: using the built-in defaults "
              f"(storage root {os.path.abspath('storage')})", file=sys.stderr)
    settings = load_settings(path)
    setup_logging(settings.logging.level, settings.logging.json_format)
    return settings


def add_config_arg(p: argparse.ArgumentParser) -> None:
    """The ``--config FILE`` option every command shares."""
    p.add_argument("--config", "-c", metavar="FILE", default=None, help="YAML configuration file")


def cli_actor() -> str:
    """Who runs the command, for the audit log: ``cli:<login user>`` (``cli`` when unknown)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"
