"""Operator pause switches: receiving, processing and sending, each on its own.

The switches live in the database (table ``node_switches``; no row = running), so every process
obeys them — the listener, the embedded worker, GPU workers on other machines, the outbox job —
and a restart keeps them. Each change writes an :class:`~pgsam_node.db.models.AuditLog` row
(``node.pause`` / ``node.resume``, who, when, from where).

What a paused switch means (the stages check it; nothing here acts on its own):

``receiving``
    New DICOM associations are refused with A-ASSOCIATE-RJ *rejected-transient* (PS3.8 9.3.4), so
    the PACS keeps the images and retries later; open associations finish. HL7 and FHIR report
    intake keeps working (reports are not images).
``processing``
    No worker claims a READY study (it stays READY); a study already RUNNING finishes. Stability,
    assembly and report waiting go on.
``sending``
    The outbox claims nothing: items stay PENDING with their attempt counters untouched, so
    nothing is retried, backed off or dead-lettered while paused.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from pgsam_node.db.models import AuditLog, NodeSwitch, utcnow
from pgsam_node.errors import NodeError

log = logging.getLogger(__name__)

RECEIVING, PROCESSING, SENDING = "receiving", "processing", "sending"
#: The switches, in pipeline order.
SWITCHES: tuple[str, ...] = (RECEIVING, PROCESSING, SENDING)
#: Longest operator note kept with a switch (longer notes are refused, not cut).
MAX_REASON = 500


class SwitchError(NodeError):
    """An unknown switch name or an unusable note (the web answers 422)."""


@dataclass(frozen=True)
class SwitchState:
    """One switch as stored (``changed_*`` are None for a switch never touched)."""

    name: str
    paused: bool
    changed_at: dt.datetime | None = None
    changed_by: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict:
        """JSON-ready form (``changed_at`` in ISO 8601, UTC)."""
        return {"name": self.name, "paused": self.paused,
                "changed_at": self.changed_at.isoformat() if self.changed_at else None,
                "changed_by": self.changed_by, "reason": self.reason}


def parse_names(what: str | Iterable[str]) -> tuple[str, ...]:
    """Switch names from operator input: one name, ``all``, or several.

    Raises
    ------
    SwitchError
        A name that is not a switch (the message lists the valid ones).
    """
    items = [what] if isinstance(what, str) else list(what)
    out: list[str] = []
    for raw in items:
        name = str(raw).strip().lower()
        if name == "all":
            names: tuple[str, ...] = SWITCHES
        elif name in SWITCHES:
            names = (name,)
        else:
            raise SwitchError(f"unknown switch {str(raw)!r}; one of {', '.join(SWITCHES)} or all")
        out.extend(n for n in names if n not in out)
    if not out:
        raise SwitchError(f"no switch named; one of {', '.join(SWITCHES)} or all")
    return tuple(n for n in SWITCHES if n in out)


def _state(name: str, row: NodeSwitch | None) -> SwitchState:
    if row is None:
        return SwitchState(name, False)
    return SwitchState(name, bool(row.paused), row.changed_at, row.changed_by, row.reason)


def is_paused(session: Session, name: str) -> bool:
    """Whether switch ``name`` is paused (read in the caller's session / transaction)."""
    row = session.get(NodeSwitch, name)
    return bool(row is not None and row.paused)


def paused_now(db, name: str) -> bool:
    """Whether switch ``name`` is paused, read on a connection of its own.

    The listener asks this once per association request: one Core ``SELECT`` (no ORM session),
    about five times cheaper than :func:`is_paused` in a session of its own.
    """
    with db.engine.connect() as c:
        return bool(c.execute(select(NodeSwitch.paused).where(NodeSwitch.name == name)).scalar())


def read_all(session: Session) -> dict[str, SwitchState]:
    """Every switch, in :data:`SWITCHES` order."""
    rows = {r.name: r for r in session.scalars(select(NodeSwitch)).all()}
    return {n: _state(n, rows.get(n)) for n in SWITCHES}


def set_paused(session: Session, names: Iterable[str], paused: bool, actor: str, *,
               remote_addr: str | None = None, reason: str | None = None) -> list[SwitchState]:
    """Pause (``paused=True``) or resume switches; audit each one that changes.

    A switch already in the asked state is left as it is (no audit row). The caller commits.

    Parameters
    ----------
    names
        Switch names (see :func:`parse_names`; ``all`` allowed).
    actor
        Who: the token's name, or ``cli:<user>``.
    reason
        Optional operator note kept with the switch (at most :data:`MAX_REASON` characters).

    Returns
    -------
    list of SwitchState
        The switches that changed, as they are now.
    """
    wanted = parse_names(list(names))
    if reason is not None:
        reason = reason.strip() or None
        if reason is not None and len(reason) > MAX_REASON:
            raise SwitchError(f"the note is {len(reason)} characters; at most {MAX_REASON}")
    now = utcnow()
    changed: list[SwitchState] = []
    for name in wanted:
        row = session.get(NodeSwitch, name)
        if row is not None and bool(row.paused) == paused:
            continue
        if row is None:
            if not paused:
                continue  # never paused: already running
            row = NodeSwitch(name=name)
            session.add(row)
        row.paused, row.changed_at, row.changed_by = paused, now, actor
        row.reason = reason if paused else None
        action = "node.pause" if paused else "node.resume"
        session.add(AuditLog(actor=actor, action=action, target=f"switch:{name}", at=now,
                             detail={"paused": paused, "reason": reason}, remote_addr=remote_addr))
        # The note is operator free text: it goes to the audit table, never to the log.
        log.log(logging.WARNING if paused else logging.INFO, "%s %s by %s", name, "PAUSED" if paused else "resumed", actor,
                    extra={"switch": name, "paused": paused, "actor": actor})
        changed.append(_state(name, row))
    session.flush()
    return changed


def summary(states: dict[str, SwitchState]) -> str:
    """One line for the console: ``receiving on · processing PAUSED (by cli:ana at …) · sending on``."""
    parts = []
    for st in states.values():
        if st.paused:
            when = st.changed_at.strftime("%Y-%m-%d %H:%M:%S UTC") if st.changed_at else "?"
            parts.append(f"{st.name} PAUSED (by {st.changed_by} at {when})")
        else:
            parts.append(f"{st.name} on")
    return " · ".join(parts)
