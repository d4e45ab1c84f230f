"""``pgsam-node config check|show``: validate a configuration file, print the effective one."""

from __future__ import annotations

import json

from pgsam_node.commands import add_config_arg
from pgsam_node.commands import load


def register(sub) -> None:
    p = sub.add_parser("config", help="validate or show the effective configuration")
    p.add_argument("action", choices=["check", "show"])
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    settings = load(args)
    if args.action == "check":
        print("configuration OK")
    else:
        print(json.dumps(settings.model_dump(mode="json", by_alias=True), indent=2))
    return 0
