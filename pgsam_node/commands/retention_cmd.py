"""``pgsam-node retention [--dry-run]``: one retention pass now (the scheduler runs it hourly)."""

from __future__ import annotations

import json

from pgsam_node.commands import add_config_arg
from pgsam_node.db import open_database
from pgsam_node.commands import load


def register(sub) -> None:
    p = sub.add_parser("retention", help="delete files of delivered studies older than retention.days")
    p.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pgsam_node.flow.retention import cleanup

    settings = load(args)
    db = open_database(settings)
    try:
        summary = cleanup(db, settings, dry_run=args.dry_run)
    finally:
        db.dispose()
    print(json.dumps({"dry_run": args.dry_run, **summary.as_dict()}, indent=2))
    return 1 if summary.errors else 0
