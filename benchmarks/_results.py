"""What the benchmarks share: writing their per-study rows for ``--json``."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path | None, rows) -> None:
    """Write ``rows`` as indented JSON to ``path`` (folders created); nothing when ``path`` is None."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2, default=str) + "\n")
