"""Node-wide operator actions shared by the API and the dashboard: the pause switches
(:mod:`pgsam_node.db.switches`) and "test destination" (:func:`pgsam_node.deliver.check.test_destination`,
the checker ``pgsam-node destination test`` uses).

Both need the ``actions`` scope and are audited (``node.pause`` / ``node.resume`` by
:func:`~pgsam_node.db.switches.set_paused`, ``destination.test`` here).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from fastapi import HTTPException, Request

from pgsam_node.db import switches
from pgsam_node.db.models import AuditLog
from pgsam_node.errors import SendError
from pgsam_node.web.auth import Auth, client_addr

log = logging.getLogger(__name__)


def _ctx(request: Request):
    return request.app.state.ctx


def _require_actions(a: Auth, what: str) -> None:
    if not a.principal.can("actions"):
        raise HTTPException(403, f"this token may not {what} (scope 'actions')")


def switch_states(request: Request) -> dict[str, switches.SwitchState]:
    """The three switches as stored now."""
    with _ctx(request).db.session() as s:
        return switches.read_all(s)


def change_switches(request: Request, a: Auth, what: str, paused: bool, reason: str | None = None) -> list[switches.SwitchState]:
    """Pause or resume ``what`` (a switch name or ``all``) for the signed-in principal.

    Raises HTTPException 403 (scope), 422 (unknown switch, note too long). Returns the switches
    that changed. A resume wakes the embedded worker through the app's ``on_action`` hook.
    """
    _require_actions(a, "pause or resume the node")
    c = _ctx(request)
    try:
        with c.db.transaction() as s:
            changed = switches.set_paused(s, [what], paused, a.principal.name, remote_addr=client_addr(request),
                                          reason=reason)
    except switches.SwitchError as exc:
        raise HTTPException(422, str(exc)) from None
    if changed and c.on_action is not None:
        try:
            c.on_action(changed)
        except Exception:  # noqa: BLE001 - the change is committed; a failed hook is only logged
            log.exception("on_action hook failed after a switch change")
    return changed


def _public_url(url: str | None) -> str | None:
    """The URL without user information (``user:password@``)."""
    if not url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def destinations(request: Request) -> list[dict]:
    """The configured destinations, as shown to operators (no credentials, no file paths)."""
    out = []
    for d in _ctx(request).settings.destinations:
        if d.type == "dicomweb":
            target = _public_url(d.url)
        else:
            target = f"{d.ae_title}@{d.host}:{d.port}"
        out.append({"name": d.name, "type": d.type, "target": target, "tls": bool(d.tls) or (target or "").startswith("https:")})
    return out


@dataclass
class DestinationCheck:
    """Outcome of one "test destination"."""

    name: str
    ok: bool
    message: str
    permanent: bool = False

    def as_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "message": self.message, "permanent": self.permanent}


def check_destination(request: Request, a: Auth, name: str) -> DestinationCheck:
    """C-ECHO (DIMSE) or the DICOMweb capability check of destination ``name``, audited.

    Raises HTTPException 403 (scope) or 404 (no such destination). A failing check is a result
    (``ok`` False with the checker's message), not an error.
    """
    from pgsam_node.deliver.check import test_destination  # pynetdicom: loaded only when used

    _require_actions(a, "test destinations")
    c = _ctx(request)
    dest = next((d for d in c.settings.destinations if d.name == name), None)
    if dest is None:
        raise HTTPException(404, f"no destination named {name!r}")
    try:
        res = DestinationCheck(name, True, test_destination(c.settings, dest))
    except SendError as exc:
        res = DestinationCheck(name, False, str(exc), exc.permanent)
    except Exception as exc:  # noqa: BLE001 - e.g. an unreadable CA or key file: shown, not a 500
        log.exception("destination %s: check failed unexpectedly", name)
        res = DestinationCheck(name, False, f"check failed: {type(exc).__name__}: {exc}")
    with c.db.transaction() as s:
        s.add(AuditLog(actor=a.principal.name, action="destination.test", target=f"destination:{name}",
                       detail={"ok": res.ok, "message": res.message}, remote_addr=client_addr(request)))
    log.info("destination %s tested by %s: %s", name, a.principal.name, "ok" if res.ok else "failed",
             extra={"destination": name, "actor": a.principal.name, "ok": res.ok})
    return res
