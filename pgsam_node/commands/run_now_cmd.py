"""``pgsam-node run-now --study UID``: run a study that waits for its report now, without the text (audited)."""

from __future__ import annotations

from sqlalchemy import select

from pgsam_node.commands import add_config_arg, load
from pgsam_node.db import open_database
from pgsam_node.errors import NodeError


def register(sub) -> None:
    p = sub.add_parser("run-now", help="run a WAITING_REPORT study now, without report text")
    add_config_arg(p)
    p.add_argument("--study", metavar="UID", required=True, help="StudyInstanceUID")
    p.set_defaults(func=run)


def run(args) -> int:
    from pgsam_node.db.models import Study
    from pgsam_node.flow.actions import ActionError, run_now

    settings = load(args)
    db = open_database(settings)
    try:
        with db.transaction() as s:
            st = s.scalars(select(Study).where(Study.study_uid == args.study)).first()
            if st is None:
                raise NodeError(f"no study {args.study}")
            try:
                res = run_now(s, st, "cli")
            except ActionError as exc:
                raise NodeError(str(exc)) from None
    finally:
        db.dispose()
    print(f"{res.message} ({res.from_state} -> {res.to_state})")
    return 0
