"""Logging set-up: per-module loggers, optional JSON lines, never patient data.

UIDs go through :func:`uid_hash` before they reach a log line; report text is never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys

# uvicorn adds "color_message" (the message with ANSI colours) to its records: not a field.
_STD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "color_message"}


def uid_hash(uid: str | None) -> str:
    """Short stable hash of a DICOM UID (or any identifier) for logs: 10 hex digits."""
    if not uid:
        return "-"
    return hashlib.sha256(uid.encode("utf-8")).hexdigest()[:10]


#: Loggers of libraries that put element values (patient names, IDs, raw bytes) in their messages
#: about malformed data: pydicom's warn_and_log, warnings.warn captured as "py.warnings", ...
_THIRD_PARTY = ("pydicom", "py.warnings", "pynetdicom", "highdicom", "PIL")
#: Quoted strings and bytes reprs: where those libraries put values ('...', "...", b'...').
_QUOTED = re.compile(r"b?'(?:[^'\\\n]|\\.)*'" + r'|b?"(?:[^"\\\n]|\\.)*"')
#: Control characters (tab excepted): a newline in a peer-supplied value must not forge a line.
_CTRL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_redaction_installed = False


def redact_values(text: str) -> str:
    """``text`` with every quoted value and bytes repr replaced by ``<value>``."""
    return _QUOTED.sub("<value>", text)


def _escape_controls(text: str) -> str:
    return _CTRL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def install_redaction() -> None:
    """Make every log record safe at creation, whatever handler later sees it (idempotent).

    * records of third-party loggers (:data:`_THIRD_PARTY`, incl. Python warnings, which are
      captured into logging here instead of going to stderr) lose every quoted value;
    * any record's message has its control characters escaped (one record = one line).

    Records are rewritten (message formatted, ``args`` emptied) only when that changes them, so
    formatters that read ``args`` (uvicorn's access log) keep working.
    """
    global _redaction_installed
    if _redaction_installed:
        return
    _redaction_installed = True
    base = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = base(*args, **kwargs)
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format: leave it to the handler's error path
            return record
        new = redact_values(msg) if record.name.startswith(_THIRD_PARTY) else msg
        new = _escape_controls(new)
        if new != msg:
            record.msg, record.args = new, ()
        return record

    logging.setLogRecordFactory(factory)
    logging.captureWarnings(True)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in _STD and not k.startswith("_")}
        if extras:
            base += " " + " ".join(f"{k}={v}" for k, v in sorted(extras.items()))
        return base


def setup_logging(level: str = "INFO", json_format: bool = False) -> None:
    """Configure the root logger once (idempotent)."""
    install_redaction()
    handler = logging.StreamHandler(sys.stderr)
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    # pynetdicom is chatty at INFO and logs dataset contents at DEBUG: keep it at WARNING.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
