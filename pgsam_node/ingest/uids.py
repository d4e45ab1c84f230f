"""UID validity (PS3.5 9.1): what the node accepts as an identifier, checked in full.

An identifier is never truncated or repaired: a value that is not a valid UID is refused (0xC210
with the reason), because a cut or rewritten UID can collide with another instance's and silently
replace it.
"""

from __future__ import annotations

import re

#: PS3.5 9.1: components of digits separated by dots, at most 64 characters in all. A leading zero
#: in a component (also forbidden by 9.1) is tolerated: sloppy modalities emit them, and they cannot
#: make two different UIDs collide, which is what this check is for.
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")
MAX_UID_LENGTH = 64


def uid_problem(value: str | None, name: str) -> str | None:
    """Why ``value`` is not a valid UID (a short reason without the value itself), or None.

    The reason never echoes the value: it may carry whatever a hostile peer put there.
    """
    if not value:
        return f"{name} is empty"
    if len(value) > MAX_UID_LENGTH:
        return f"{name} has {len(value)} characters, more than the {MAX_UID_LENGTH} PS3.5 9.1 allows"
    if not value.isascii():
        return f"{name} holds non-ASCII characters (PS3.5 9.1: digits and dots only)"
    if not _UID_RE.fullmatch(value):
        return f"{name} is not digits separated by dots (PS3.5 9.1)"
    return None
