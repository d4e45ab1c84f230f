"""``pgsam-node resend``: put outbox items back in the queue (attempts reset, audited).

    pgsam-node resend --config FILE --study STUDY_UID   # every item of a study (re-send to the PACS)
    pgsam-node resend --config FILE --item ID           # one item
    pgsam-node resend --config FILE --dead              # every dead-letter item
"""

from __future__ import annotations

from pgsam_node.commands import add_config_arg
from pgsam_node.db import open_database
from pgsam_node.commands import load


def register(sub) -> None:
    p = sub.add_parser("resend", help="re-queue outbox items (a study, one item, or all dead ones)")
    add_config_arg(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--study", metavar="UID", help="StudyInstanceUID: re-queue all its items")
    g.add_argument("--item", metavar="ID", type=int, help="outbox item id")
    g.add_argument("--dead", action="store_true", help="re-queue every DEAD item")
    p.set_defaults(func=run)


def run(args) -> int:
    from pgsam_node.deliver.outbox import outbox_counts
    from pgsam_node.flow.actions import resend_items

    settings = load(args)
    db = open_database(settings)
    try:
        with db.transaction() as s:
            n = resend_items(s, study_uid=args.study, item_id=args.item, dead=args.dead, actor="cli")
        with db.session() as s:
            counts = outbox_counts(s)
    finally:
        db.dispose()
    print(f"re-queued {n} item(s); outbox now: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0 if n else 1
