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


def collect(db, limit: int = 50, required_roles=("T1", "T2", "T1C"), settings=None) -> list[dict[str, Any]]:
    """Most recent studies (by last instance) with their series, as plain dicts."""
    from pgsam_node.assemble.readiness import missing_roles, report_wait
    from pgsam_node.db.models import Study
    from pgsam_node.deliver.progress import pending_delivery

    out = []
    with db.session() as s:
        studies = s.scalars(
            select(Study).options(selectinload(Study.series)).order_by(Study.last_instance_at.desc()).limit(limit)
        ).all()
        delivery = pending_delivery(s, [st.id for st in studies])
        for st in studies:
            series = sorted(st.series, key=lambda x: (x.series_number is None, x.series_number or 0, x.series_uid))
            out.append({
                "study_uid": st.study_uid,
                "accession_number": st.accession_number,
                "state": st.state,
                "state_reason": st.state_reason,
                "first_instance_at": st.first_instance_at.isoformat() if st.first_instance_at else None,
                "last_instance_at": st.last_instance_at.isoformat() if st.last_instance_at else None,
                "missing_roles": missing_roles(st, required_roles),
                "delivery": delivery.get(st.id, []),
                "report_wait": report_wait(st, settings) if settings is not None else None,
                "series": [
                    {
                        "series_uid": se.series_uid,
                        "series_number": se.series_number,
                        "description": se.description,
                        "modality": se.modality,
                        "sop_class_uid": se.sop_class_uid,
                        "role": se.role,
                        "selected": bool(se.role_selected),
                        "reason": se.role_reason,
                        "instances": se.instance_count,
                    }
                    for se in series
                ],
            })
    return out


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
            lines.append(f"  {sn:>6}  {se['role'] or '-':<5} {'*' if se['selected'] else '':<3} {se['instances']:>5}"
                         f"  {(se['description'] or '')[:28]:<28} {se['reason'] or ''}")
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
        studies = collect(db, args.limit, settings.assembly.required_roles, settings)
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
