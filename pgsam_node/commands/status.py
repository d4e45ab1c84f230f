"""``pgsam-node status [--json]``: studies, their series, roles and states."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from pgsam_node.commands import add_config_arg
from pgsam_node.commands import load


def register(sub) -> None:
    p = sub.add_parser("status", help="show received studies, series roles and states")
    add_config_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--limit", type=int, default=50, help="most recent studies to show (default 50)")
    p.set_defaults(func=run)


def collect(db, limit: int = 50, settings=None) -> list[dict[str, Any]]:
    """The most recent studies (by last instance), each as the one study summary with its parts
    (:func:`pgsam_node.flow.summary.study_summaries`, ``detail=True``): the keys the REST API's
    ``GET /studies/{id}`` returns."""
    from pgsam_node.db.models import Study
    from pgsam_node.flow.summary import study_summaries

    with db.session() as s:
        studies = s.scalars(
            select(Study).options(selectinload(Study.series)).order_by(Study.last_instance_at.desc()).limit(limit)
        ).all()
        return study_summaries(s, studies, detail=True, settings=settings)


def format_table(studies: list[dict[str, Any]]) -> str:
    """Human-readable table of :func:`collect` output."""
    if not studies:
        return "no studies received"
    from pgsam_node.assemble.readiness import format_missing
    from pgsam_node.deliver.progress import format_delivery

    lines = []
    for st in studies:
        lines.append(f"study {st['study_uid']}  state {st['state']}  accession {st['accession_number'] or '-'}"
                     f"  last instance {st['last_instance_at']}")
        if st.get("state_reason"):
            lines.append(f"  reason: {st['state_reason']}")
        lines.extend(format_missing(st.get("missing_roles") or []))
        if st.get("report_wait"):
            lines.append(f"  report: {st['report_wait']}")
        if st.get("delivery"):
            lines.append(f"  delivery: {format_delivery(st['delivery'])}")
        lines.append(f"  {'#':>6}  {'role':<5} {'sel':<3} {'inst':>5}  {'description':<28} reason")
        for se in st["series"]:
            sn = "" if se["series_number"] is None else str(se["series_number"])
            lines.append(f"  {sn:>6}  {se['role'] or '-':<5} {'*' if se['role_selected'] else '':<3} {se['instance_count']:>5}"
                         f"  {(se['description'] or '')[:28]:<28} {se['role_reason'] or ''}")
    return "\n".join(lines)


def _switches(db):
    """The operator pause switches (:mod:`pgsam_node.db.switches`)."""
    from pgsam_node.db import switches

    with db.session() as s:
        return switches.read_all(s)


def run(args) -> int:
    from pgsam_node.db import open_database

    settings = load(args)
    db = open_database(settings)
    try:
        studies = collect(db, args.limit, settings)
        node_switches = _switches(db)
    finally:
        db.dispose()
    if args.json:
        print(json.dumps({"switches": {n: st.as_dict() for n, st in node_switches.items()}, "studies": studies},
                         indent=2))
    else:
        from pgsam_node.db.switches import summary

        print(f"node: {summary(node_switches)}")
        print(format_table(studies))
    return 0
