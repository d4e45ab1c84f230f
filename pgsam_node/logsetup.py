"""Logging set-up: per-module loggers, optional JSON lines, never patient data.

UIDs go through :func:`uid_hash` before they reach a log line; report text is never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys

# uvicorn adds "color_message" (the message with ANSI colours) to its records: not a field.
_STD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "color_message"}


def uid_hash(uid: str | None) -> str:
    """Short stable hash of a DICOM UID (or any identifier) for logs: 10 hex digits."""
    if not uid:
        return "-"
    return hashlib.sha256(uid.encode("utf-8")).hexdigest()[:10]


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
