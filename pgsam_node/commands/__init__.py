"""Sub-commands of ``pgsam-node``; one module per command group."""

from __future__ import annotations

import argparse

from pgsam_node.config import Settings, load_settings
from pgsam_node.logsetup import setup_logging


def load(args) -> Settings:
    """Load settings from ``args.config`` and set up logging from them."""
    settings = load_settings(getattr(args, "config", None))
    setup_logging(settings.logging.level, settings.logging.json_format)
    return settings


def add_config_arg(p: argparse.ArgumentParser) -> None:
    """The ``--config FILE`` option every command shares."""
    p.add_argument("--config", "-c", metavar="FILE", default=None, help="YAML configuration file")
