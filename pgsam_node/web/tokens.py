"""API / dashboard credentials: random tokens stored hashed (scrypt + salt), never a default password.

A token reads ``pgsam_<key_id>_<secret>``: ``key_id`` (12 hex digits) finds the row, the whole
token is verified against an scrypt hash with a per-token salt using a constant-time compare.
The plain token exists only in the output of :func:`create_token` (shown once).

Scopes
------
``read``
    the REST API and the dashboard (every token has it).
``actions``
    operator actions: retry, resend, reprocess.
``report-text``
    the matched report's text (otherwise findings only).
``report-intake``
    post reports (FHIR ``POST /fhir/DiagnosticReport``).
``admin``
    everything above (the first-run token).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from pgsam_node.db.models import ApiToken, AuditLog, utcnow
from pgsam_node.errors import WebError

log = logging.getLogger(__name__)

SCOPES = ("read", "actions", "report-text", "report-intake", "admin")
FIRST_RUN_NAME = "admin"
PREFIX = "pgsam"
# scrypt cost: n=2**14, r=8 (16 MiB, tens of ms). Tokens are 256-bit random, so this is defence in
# depth for a stolen database; verified tokens are cached in memory by the web app.
_N, _R, _P = 2**14, 8, 1


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token (directly, or through a signed-in session)."""

    token_id: int
    name: str
    scopes: frozenset[str] = field(default_factory=frozenset)

    def can(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def hash_token(token: str, salt: bytes | None = None) -> str:
    """scrypt hash ``scrypt$n$r$p$salt$hash`` (hex) of ``token``."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(token.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def check_hash(token: str, stored: str) -> bool:
    """Constant-time check of ``token`` against a :func:`hash_token` string."""
    try:
        algo, n, r, p, salt_hex, digest_hex = stored.split("$")
        if algo != "scrypt":
            return False
        digest = hashlib.scrypt(
            token.encode("utf-8"), salt=bytes.fromhex(salt_hex), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest.hex(), digest_hex)


def normalize_scopes(scopes: list[str] | tuple[str, ...] | None) -> list[str]:
    """Validated, sorted scope list; ``read`` is always included."""
    out = {"read"}
    for s in scopes or ():
        if s not in SCOPES:
            raise WebError(f"unknown scope {s!r}; choose from {', '.join(SCOPES)}")
        out.add(s)
    return sorted(out)


def _split(token: str) -> tuple[str, str] | None:
    parts = token.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != 12:
        return None
    return parts[1], parts[2]


def create_token(session: Session, name: str, scopes: list[str] | None = None, actor: str = "cli") -> str:
    """Create a token row and return the plain token (the only time it exists in clear).

    Raises
    ------
    WebError
        The name is taken or empty, or a scope is unknown.
    """
    name = name.strip()
    if not name or len(name) > 64:
        raise WebError("a token name is 1-64 characters")
    if session.scalar(select(ApiToken).where(ApiToken.name == name)) is not None:
        raise WebError(f"a token named {name!r} exists; revoke it or choose another name")
    sc = normalize_scopes(scopes)
    key_id = secrets.token_hex(6)
    token = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    session.add(ApiToken(name=name, token_hash=hash_token(token), key_id=key_id, scopes=sc))
    session.add(AuditLog(actor=actor, action="token.create", target=f"token:{name}", detail={"scopes": sc}))
    log.info("token %s created with scopes %s", name, ",".join(sc), extra={"actor": actor})
    return token


def verify_token(session: Session, token: str) -> Principal | None:
    """The principal for ``token``, or None when unknown, wrong or revoked."""
    split = _split(token)
    if split is None:
        return None
    row = session.scalar(select(ApiToken).where(ApiToken.key_id == split[0]))
    if row is None or row.revoked or not check_hash(token.strip(), row.token_hash):
        return None
    return Principal(row.id, row.name, frozenset(row.scopes or ["read"]))


def principal_by_id(session: Session, token_id: int) -> Principal | None:
    """The principal of a token row still valid (not revoked), for sessions and the cache."""
    row = session.get(ApiToken, token_id)
    if row is None or row.revoked:
        return None
    return Principal(row.id, row.name, frozenset(row.scopes or ["read"]))


def revoke_token(session: Session, name: str, actor: str = "cli") -> None:
    """Revoke the token ``name`` (its sessions end at their next request)."""
    row = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is None:
        raise WebError(f"no token named {name!r}")
    row.revoked = True
    session.add(AuditLog(actor=actor, action="token.revoke", target=f"token:{name}", detail={}))
    log.info("token %s revoked", name, extra={"actor": actor})


def list_tokens(session: Session) -> list[dict]:
    """Name, scopes, dates and revocation of every token (never the hash)."""
    rows = session.scalars(select(ApiToken).order_by(ApiToken.id)).all()
    return [
        {
            "name": r.name,
            "scopes": list(r.scopes or []),
            "created_at": r.created_at.isoformat() if r.created_at else None,
            "last_used_at": r.last_used_at.isoformat() if r.last_used_at else None,
            "revoked": bool(r.revoked),
        }
        for r in rows
    ]


def ensure_first_run_token(session: Session) -> str | None:
    """On first run (no token row at all) create the ``admin`` token and return it, else None.

    The caller shows it once (``serve`` prints it on stderr). A lost admin token is replaced with
    ``pgsam-node token create NAME --scope admin`` on the node itself.
    """
    if session.scalar(select(ApiToken.id).limit(1)) is not None:
        return None
    return create_token(session, FIRST_RUN_NAME, ["admin"], actor="first-run")


def has_usable_admin(session: Session) -> bool:
    """Whether a token with the ``admin`` scope exists and is not revoked."""
    rows = session.scalars(select(ApiToken).where(ApiToken.revoked.is_(False))).all()
    return any("admin" in (r.scopes or []) for r in rows)


def touch(session: Session, token_id: int) -> None:
    """Record the last use of a token."""
    row = session.get(ApiToken, token_id)
    if row is not None:
        row.last_used_at = utcnow()
