"""Sub-commands of ``pgsam-node``; one module per command group."""

from __future__ import annotations

from ..config import Settings, load_settings
from ..logsetup import setup_logging


def load(args) -> Settings:
    """Load settings from ``args.config`` and set up logging from them."""
    settings = load_settings(getattr(args, "config", None))
    setup_logging(settings.logging.level, settings.logging.json_format)
    return settings
