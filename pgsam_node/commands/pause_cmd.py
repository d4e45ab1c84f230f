"""``pgsam-node pause|resume receiving|processing|sending|all``: the operator switches.

The switches live in the node database (:mod:`pgsam_node.db.switches`), so the command works on
a running node from another shell, and the state survives a restart. Each change is audited as
``cli:<user>``.
"""

from __future__ import annotations

import json

from pgsam_node.commands import add_config_arg, cli_actor, load
from pgsam_node.errors import ConfigError

CHOICES = ("receiving", "processing", "sending", "all")


def register(sub) -> None:
    for verb, helptext in (("pause", "pause receiving, processing or sending (persisted, audited)"),
                           ("resume", "resume what 'pause' stopped")):
        p = sub.add_parser(verb, help=helptext)
        p.add_argument("what", nargs="+", choices=CHOICES, metavar="{" + ",".join(CHOICES) + "}",
                       help="which switch(es); all = the three")
        if verb == "pause":
            p.add_argument("--reason", default=None, help="note kept with the switch and in the audit log")
        p.add_argument("--json", action="store_true", help="print the switches as JSON afterwards")
        add_config_arg(p)
        p.set_defaults(func=run, paused=(verb == "pause"))


def run(args) -> int:
    from pgsam_node.db import open_database, switches

    settings = load(args)
    db = open_database(settings)
    try:
        try:
            with db.transaction() as s:
                changed = switches.set_paused(s, args.what, args.paused, cli_actor(), reason=getattr(args, "reason", None))
        except switches.SwitchError as exc:
            raise ConfigError(str(exc)) from None
        with db.session() as s:
            states = switches.read_all(s)
    finally:
        db.dispose()
    if args.json:
        print(json.dumps({"changed": [c.name for c in changed], "switches": {n: st.as_dict() for n, st in states.items()}},
                         indent=2))
    else:
        verb = "paused" if args.paused else "resumed"
        print(f"{verb}: {', '.join(c.name for c in changed)}" if changed else f"nothing changed (already {verb})")
        print(switches.summary(states))
    return 0
