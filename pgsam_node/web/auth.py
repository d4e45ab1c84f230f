"""Web authentication: bearer tokens, signed session cookies, CSRF tokens, sign-in backoff.

* ``Authorization: Bearer pgsam_…`` authenticates API calls (no cookie, so no CSRF exposure).
* Signing in on the dashboard with a token sets a session cookie (HttpOnly, SameSite=Strict,
  ``Secure`` under HTTPS) signed with HMAC-SHA256 using a secret kept in
  ``<storage root>/secrets/web_session.key`` (mode 0600). The session names the token row, so
  revoking the token ends its sessions.
* State-changing dashboard requests carry the session's CSRF token (form field ``csrf`` or header
  ``X-CSRF-Token``), compared in constant time.
* Failed sign-ins back off per client address (in memory, exponential, capped).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request

from pgsam_node.web import tokens
from pgsam_node.web.tokens import Principal

SESSION_COOKIE = "pgsam_session"
LOGIN_CSRF_COOKIE = "pgsam_login_csrf"


def load_or_create_secret(storage_root: Path) -> bytes:
    """The session-signing secret under ``storage_root/secrets`` (created 0600 on first use)."""
    d = Path(storage_root) / "secrets"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    path = d / "web_session.key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        data = path.read_bytes().strip()
        if len(data) >= 32:
            return data
        raise
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_hex(32).encode("ascii"))
        f.flush()
        os.fsync(f.fileno())
    return path.read_bytes().strip()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class SessionData:
    token_id: int
    expires: float
    csrf: str


class SessionSigner:
    """Signs and verifies session cookie values (``payload.signature``, both base64url)."""

    def __init__(self, secret: bytes, lifetime_seconds: float):
        self._key = hashlib.sha256(b"pgsam-session\0" + secret).digest()
        self.lifetime = lifetime_seconds

    def _sig(self, payload: bytes) -> str:
        return _b64(hmac.new(self._key, payload, hashlib.sha256).digest())

    def issue(self, token_id: int, now: float | None = None) -> tuple[str, SessionData]:
        now = time.time() if now is None else now
        data = SessionData(token_id, now + self.lifetime, secrets.token_urlsafe(24))
        payload = json.dumps({"t": data.token_id, "e": int(data.expires), "c": data.csrf}, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{self._sig(payload)}", data

    def verify(self, value: str | None, now: float | None = None) -> SessionData | None:
        if not value or "." not in value:
            return None
        body, sig = value.rsplit(".", 1)
        try:
            payload = _unb64(body)
        except ValueError:
            return None
        if not hmac.compare_digest(self._sig(payload), sig):
            return None
        try:
            obj = json.loads(payload)
            data = SessionData(int(obj["t"]), float(obj["e"]), str(obj["c"]))
        except (ValueError, KeyError, TypeError):
            return None
        if data.expires < (time.time() if now is None else now):
            return None
        return data


def csrf_ok(expected: str | None, given: str | None) -> bool:
    """Constant-time CSRF token check; a missing value never matches."""
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


class LoginLimiter:
    """In-memory backoff of failed sign-ins per client key (address).

    After ``free`` failures each further failure locks the key for ``base * 2**(n - free)``
    seconds, capped at ``cap``; a success clears the key.
    """

    def __init__(self, free: int = 5, base: float = 1.0, cap: float = 300.0, clock=time.monotonic):
        self.free, self.base, self.cap, self.clock = free, base, cap, clock
        self._fails: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> float:
        """Seconds the key must wait before its next attempt (0 = may try now)."""
        with self._lock:
            n, until = self._fails.get(key, (0, 0.0))
        return max(0.0, until - self.clock())

    def failure(self, key: str) -> None:
        with self._lock:
            n, _ = self._fails.get(key, (0, 0.0))
            n += 1
            until = self.clock() + min(self.cap, self.base * 2 ** (n - self.free)) if n >= self.free else 0.0
            self._fails[key] = (n, until)
            if len(self._fails) > 10000:  # bound memory under a spray of addresses
                self._fails.pop(next(iter(self._fails)))

    def success(self, key: str) -> None:
        with self._lock:
            self._fails.pop(key, None)


@dataclass
class Auth:
    principal: Principal
    via: str  # "token" or "session"
    session: SessionData | None = None

    @property
    def csrf(self) -> str | None:
        return self.session.csrf if self.session else None


class Authenticator:
    """Resolves a request to an :class:`Auth` (bearer token first, then the session cookie)."""

    CACHE_SECONDS = 60.0

    def __init__(self, db, signer: SessionSigner, limiter: LoginLimiter | None = None):
        self.db = db
        self.signer = signer
        #: Backoff of wrong bearer tokens per client address (as for sign-ins): without it a
        #: client could try hundreds of tokens a second.
        self.limiter = limiter or LoginLimiter(free=10, base=0.5, cap=300.0)
        self._cache: dict[str, tuple[int, float]] = {}
        self._touched: dict[int, float] = {}
        self._lock = threading.Lock()

    def _by_token(self, token: str) -> Principal | None:
        key = hashlib.sha256(token.encode("utf-8")).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        with self.db.session() as s:
            if hit and hit[1] > now:
                p = tokens.principal_by_id(s, hit[0])  # re-checks revocation on every request
            else:
                p = tokens.verify_token(s, token)
                if p is not None:
                    with self._lock:
                        if len(self._cache) > 1000:
                            self._cache.clear()
                        self._cache[key] = (p.token_id, now + self.CACHE_SECONDS)
        if p is not None:
            self._touch(p.token_id)
        return p

    def _touch(self, token_id: int) -> None:
        now = time.monotonic()
        with self._lock:
            if self._touched.get(token_id, 0.0) > now - 60:
                return
            self._touched[token_id] = now
        with self.db.transaction() as s:
            tokens.touch(s, token_id)

    def authenticate(self, request: Request) -> Auth | None:
        header = request.headers.get("authorization")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                return None
            addr = client_addr(request) or "?"
            wait = self.limiter.retry_after(addr)
            if wait > 0:
                raise HTTPException(429, "too many wrong bearer tokens from this address; retry later",
                                    headers={"Retry-After": str(int(wait) + 1)})
            p = self._by_token(value.strip())
            if p is None:
                self.limiter.failure(addr)
                return None
            self.limiter.success(addr)
            return Auth(p, "token")
        data = self.signer.verify(request.cookies.get(SESSION_COOKIE))
        if data is None:
            return None
        with self.db.session() as s:
            p = tokens.principal_by_id(s, data.token_id)
        return Auth(p, "session", data) if p else None


def client_addr(request: Request) -> str | None:
    return request.client.host if request.client else None
