"""File-system durability helpers shared by the spool and the journal."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """fsync a directory, so a file created or renamed in it survives a power loss (POSIX: the
    entry lives in the directory, not the file)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, root: Path, fsync: bool = True) -> None:
    """Create ``path`` and any missing parents up to ``root``, fsyncing the parent of each new
    directory (unless ``fsync`` is False): a directory created just before an acknowledgement must
    survive a power loss with it (the entry lives in the parent)."""
    missing = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p == root or p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            pass
        if fsync:
            fsync_dir(d.parent)
