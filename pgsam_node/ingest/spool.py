"""Durable spool of received instances: ``<spool>/<study>/<series>/<sop>.dcm``.

Every instance is written as a DICOM Part-10 file (PS3.10 7.1: 128-byte preamble, ``DICM``,
File Meta Information in Explicit VR Little Endian, then the data set exactly as received in the
accepted transfer syntax). Nothing is decoded or re-encoded: the bytes the peer sent are the bytes
we keep, which is both fastest and the only way to keep lossy-compressed pixel data bit-exact.

Durability protocol (persist before acknowledge): write to a unique temporary file in
``settings.tmp_dir`` (same file system as the spool), ``fsync`` it, ``rename`` it over the final
name (atomic on POSIX, so a re-sent instance replaces the old file without a window where neither
exists), then ``fsync`` the directory so the rename itself survives a power loss. A crash at any
point leaves either the old complete file, the new complete file, or a stray temporary file that
:func:`clean_tmp` removes at start-up - never a half file in the spool.

That is ``storage.write_protocol: rename``. With ``journal`` (the default) the listener's
:class:`IncomingFile` is placed without either flush and :meth:`IncomingFile.make_durable` appends it
to the write-ahead journal (:mod:`pgsam_node.ingest.journal`): one flush per acknowledgement, shared
across associations; start-up writes back from the journal whatever the spool lost.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import re
import shutil
import struct
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from pgsam_node.ingest.fsutil import fsync_dir, make_dirs

from pgsam_node.errors import ReceiveError, StorageFullError

log = logging.getLogger(__name__)

#: PS3.5 9.1: a UID is digits and dots, at most 64 characters. Only such strings become path
#: components verbatim; anything else is hashed (a hostile "UID" must not escape the spool).
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: The node's own Implementation Class UID (PS3.7 D.3.3.2), in files' meta and association
#: negotiation: the receiving side is the node's own code, not pynetdicom's. A name-based UID under
#: pydicom's root: generate_uid(entropy_srcs=["PG-SAM Node", "implementation"]).
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.94536492904963136482174471386377859774"
IMPLEMENTATION_VERSION_NAME = "PGSAM_NODE_01"
TMP_SUFFIX = ".part"

_dir_lock = threading.Lock()
#: Directories known to exist (Path from _ensure_dir, str from IncomingFile's string fast path).
_known_dirs: set = set()


@dataclass(frozen=True)
class StoredFile:
    """A file durably placed in the spool.

    Attributes
    ----------
    path : Path
        Absolute path of the file.
    rel_path : str
        Path relative to the storage root (what the index stores).
    size : int
        File size in bytes (preamble and meta included).
    """

    path: Path
    rel_path: str
    size: int


def path_component(uid: str) -> str:
    """File-system-safe name for a UID: the UID itself when valid, else a hash (``x<sha256>``)."""
    uid = uid.strip().rstrip("\x00")
    if len(uid) <= 64 and _UID_RE.match(uid):
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def spool_relpath(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Spool path of an instance relative to the storage root (POSIX separators)."""
    return f"spool/{path_component(study_uid)}/{path_component(series_uid)}/{path_component(sop_uid)}.dcm"


# ---- PS3.10 File Meta Information ------------------------------------------------------------
def _elem(tag_group: int, tag_elem: int, vr: bytes, value: bytes) -> bytes:
    # Explicit VR Little Endian (PS3.5 7.1.2); OB uses the 4-byte length form.
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2sHI", tag_group, tag_elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag_group, tag_elem, vr, len(value)) + value


def _ui(value: str) -> bytes:
    b = value.encode("ascii")
    return b + b"\x00" if len(b) % 2 else b  # UI pads with NUL (PS3.5 6.2)


def _sh(value: str) -> bytes:
    b = value.encode("ascii", "replace")[:16]
    return b + b" " if len(b) % 2 else b


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_aet: str | None = None) -> bytes:
    """Encode the preamble, ``DICM`` prefix and File Meta Information group (PS3.10 7.1).

    Parameters
    ----------
    sop_class_uid, sop_instance_uid
        Media Storage SOP Class / Instance UID (0002,0002)/(0002,0003).
    transfer_syntax_uid
        The transfer syntax the data set is encoded in: the one accepted for the presentation
        context it arrived on (0002,0010).
    source_aet
        Calling AE title, recorded as Source Application Entity Title (0002,0016).
    """
    body = b"".join(
        (
            _elem(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _elem(0x0002, 0x0002, b"UI", _ui(sop_class_uid)),
            _elem(0x0002, 0x0003, b"UI", _ui(sop_instance_uid)),
            _elem(0x0002, 0x0010, b"UI", _ui(transfer_syntax_uid)),
            _elem(0x0002, 0x0012, b"UI", _ui(IMPLEMENTATION_CLASS_UID)),
            _elem(0x0002, 0x0013, b"SH", _sh(IMPLEMENTATION_VERSION_NAME)),
            _elem(0x0002, 0x0016, b"AE", _sh(source_aet.strip())) if source_aet and source_aet.strip() else b"",
        )
    )
    group_length = _elem(0x0002, 0x0000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body


# ---- free space ----------------------------------------------------------------------------
def free_bytes(path: Path) -> int:
    """Free bytes available to this process on the file system holding ``path``."""
    p = Path(path)
    while True:
        try:
            return shutil.disk_usage(p).free
        except FileNotFoundError:
            if p == p.parent:
                raise
            p = p.parent  # not created yet: ask the file system that will hold it


#: A free-space reading is reused for this long (statvfs on every instance cost ~20 us), but never
#: when it is within _FRESH_MARGIN of the reserve.
_FREE_TTL = 0.25
_FRESH_MARGIN = 256 * 1024 * 1024
_free_cache: dict[str, tuple[float, int]] = {}


def _free_recent(root: Path, fresh: bool = False) -> int:
    key = str(root)
    now = time.monotonic()
    cached = _free_cache.get(key)
    if not fresh and cached is not None and now - cached[0] < _FREE_TTL:
        return cached[1]
    free = free_bytes(root)
    _free_cache[key] = (now, free)
    return free


def check_free(settings, needed: int) -> None:
    """Refuse (``StorageFullError``) when writing ``needed`` bytes would cross the reserve.

    ``storage.min_free_bytes`` is kept free so that the database, logs and outputs can still be
    written after the spool stops taking instances.
    """
    root = settings.storage_root
    reserve = settings.storage.min_free_bytes
    free = _free_recent(root)
    if free - needed - reserve < _FRESH_MARGIN:
        free = _free_recent(root, fresh=True)  # near the reserve: always ask the file system
    if free - needed < reserve:
        raise StorageFullError(
            f"storage below its reserve: {free} bytes free, instance needs {needed}, "
            f"reserve storage.min_free_bytes={settings.storage.min_free_bytes}"
        )


# ---- writing --------------------------------------------------------------------------------


def fsync_dirs(*paths: Path) -> None:
    """fsync directories (after a rename between them, so that it survives a power loss)."""
    for p in paths:
        fsync_dir(p)


def _ensure_dir(path: Path, root: Path, fsync: bool) -> None:
    """Create ``path`` (and parents up to ``root``), fsyncing each parent of a new directory."""
    if path in _known_dirs:
        return
    with _dir_lock:
        if path in _known_dirs:
            return
        make_dirs(path, root, fsync)
        _known_dirs.add(path)


def forget_dir_cache() -> None:
    """Forget which spool directories are known to exist (after retention deletes some)."""
    with _dir_lock:
        _known_dirs.clear()
        for fd in _dir_fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        _dir_fds.clear()


@functools.lru_cache(maxsize=16)
def _dirs(root_setting: Path, cwd: str) -> tuple[str, str]:
    """(storage root, temporary directory) as absolute path strings."""
    root = root_setting if root_setting.is_absolute() else Path(cwd) / root_setting
    return str(root), str(root / "tmp")


#: Open descriptors of recently used series directories, so that the per-instance directory fsync
#: does not open and close the directory each time (a series arrives as hundreds of instances).
_dir_fds: "OrderedDict[str, int]" = OrderedDict()
_DIR_FDS_MAX = 32


def _fsync_dir_cached(path: str) -> None:
    with _dir_lock:
        fd = _dir_fds.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            while len(_dir_fds) >= _DIR_FDS_MAX:
                os.close(_dir_fds.popitem(last=False)[1])
        _dir_fds[path] = fd  # most recently used last
        own = os.dup(fd)  # ours alone: forget_dir_cache may close the cached one meanwhile
    try:
        os.fsync(own)
    finally:
        os.close(own)


def write_instance(settings, rel_path: str, chunks: tuple[bytes, ...] | list[bytes]) -> StoredFile:
    """Durably write ``chunks`` (meta + data set) to ``storage_root / rel_path``: an
    :class:`IncomingFile` written in one go (the same protocol as the listener's streamed writes).

    Parameters
    ----------
    settings
        Node settings (``storage.fsync``, ``storage.min_free_bytes``, storage paths).
    rel_path
        Destination relative to the storage root (from :func:`spool_relpath`).
    chunks
        Byte strings written in order (no concatenation copy).

    Returns
    -------
    StoredFile

    Raises
    ------
    StorageFullError
        Below the reserve or the disk filled up while writing (nothing is left behind).
    ReceiveError
        Any other I/O error.
    """
    size = sum(len(c) for c in chunks)
    check_free(settings, size)
    incoming = IncomingFile(settings, b"")
    for c in chunks:
        incoming.write(c)
    return incoming.commit(rel_path)


_AHEAD = "-ahead-"
#: Bytes written between two checks of the storage reserve while a data set streams in.
_RESERVE_STEP = 1 << 20


class TempFiles:
    """Empty temporary files created ahead of need on a background thread.

    Creating a file costs a journal handle and an inode allocation (0.1-0.6 ms on the development
    VM, the largest single cost of receiving an instance after the fsyncs). The listener takes a
    ready file when a C-STORE begins and a background thread creates the next one while the
    association waits on the network or on fsync. Unused files are removed by :meth:`close`, or by
    :func:`clean_tmp` after a crash (they end in ``.part`` and hold nothing).
    """

    def __init__(self, settings, keep: int = 2):
        self.root, self.dir = _dirs(settings.storage.root, os.getcwd())
        _ensure_dir(Path(self.dir), Path(self.root), settings.storage.fsync)
        self.keep = keep
        self._ready: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name="spool-tmp", daemon=True)
        self._thread.start()
        self._wake.set()

    def _create(self) -> tuple[str, int]:
        with self._lock:
            self._seq += 1
            seq = self._seq
        path = f"{self.dir}/{os.getpid()}{_AHEAD}{id(self):x}-{seq}{TMP_SUFFIX}"
        return path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)  # read back by the journal

    def take(self) -> tuple[str, int] | None:
        """A ready (path, fd), or None when none is ready (the caller creates its own)."""
        with self._lock:
            item = self._ready.pop() if self._ready else None
        self._wake.set()
        return item

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            while not self._closed:
                with self._lock:
                    if len(self._ready) >= self.keep:
                        break
                try:
                    item = self._create()
                except OSError as exc:
                    log.warning("cannot create a temporary file ahead of need: %s", exc.strerror)
                    break
                with self._lock:
                    if self._closed:
                        _drop(item)
                        return
                    self._ready.append(item)

    def close(self) -> None:
        """Stop the thread; remove the files not taken."""
        with self._lock:
            self._closed = True
            items, self._ready = self._ready, []
        self._wake.set()
        self._thread.join(5)
        for item in items:
            _drop(item)


def leftover_tmp(tmp_dir: Path) -> list[Path]:
    """Files in the temporary directory (``settings.tmp_dir``) other than empty ones made ahead of
    need by :class:`TempFiles`: what an interrupted or refused transfer would have left behind."""
    tmp_dir = Path(tmp_dir)
    if not tmp_dir.is_dir():
        return []
    return [p for p in tmp_dir.iterdir() if not (_AHEAD in p.name and p.stat().st_size == 0)]


def _drop(item: tuple[str, int]) -> None:
    path, fd = item
    try:
        os.close(fd)
    except OSError:
        pass
    try:
        os.unlink(path)
    except OSError:
        pass


class IncomingFile:
    """A Part-10 file being received: streamed into a temporary file as fragments arrive, then
    made durable and renamed into the spool by :meth:`commit` (the same protocol as
    :func:`write_instance`, without holding the data set in memory).

    Parameters
    ----------
    settings
        Node settings (storage paths, ``storage.fsync``, ``storage.min_free_bytes``).
    meta
        Preamble + File Meta Information (:func:`file_meta_bytes`).

    Raises
    ------
    StorageFullError
        Already below the reserve: nothing is written.
    ReceiveError
        The temporary file cannot be created.
    """

    _seq = 0
    _seq_lock = threading.Lock()

    def __init__(self, settings, meta: bytes, temp_files: TempFiles | None = None, max_bytes: int | None = None,
                 journal=None):
        self.settings = settings
        #: With a :class:`~pgsam_node.ingest.journal.Journal`: :meth:`commit` places the file without
        #: flushing it and :meth:`make_durable` journals it (one flush, shared by all associations).
        self.journal = journal
        self.crc = 0
        #: Spool path of a file placed but not yet durable (journal protocol).
        self.pending_rel: str | None = None
        check_free(settings, len(meta))
        self.root, tmp_dir = _dirs(settings.storage.root, os.getcwd())
        self.meta_len = len(meta)
        self.size = 0
        self.max_bytes = max_bytes
        self._next_check = _RESERVE_STEP
        self._synced = False
        self.fd: int | None = None
        ready = temp_files.take() if temp_files is not None else None
        if ready is not None:
            self.tmp, self.fd = ready
        else:
            if tmp_dir not in _known_dirs:
                _ensure_dir(Path(tmp_dir), Path(self.root), settings.storage.fsync)
                _known_dirs.add(tmp_dir)
            with IncomingFile._seq_lock:
                IncomingFile._seq += 1
                seq = IncomingFile._seq
            # Plain strings on this path: pathlib cost more per instance than the file operations' Python side.
            self.tmp = f"{tmp_dir}/{os.getpid()}-{threading.get_ident()}-{seq}{TMP_SUFFIX}"
            try:
                self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o640)
            except OSError as exc:
                raise _io_error(exc, "cannot create a temporary file") from exc
        self.write(meta)

    def write(self, data) -> None:
        """Append bytes (bytes or memoryview). Raises StorageFullError/ReceiveError (file removed).

        The storage reserve is checked again after every ``_RESERVE_STEP`` bytes written, so a
        large data set is refused (0xA700) before the disk fills, not at ENOSPC; ``max_bytes``
        (when set) bounds the file.
        """
        view = memoryview(data)
        if self.size + len(view) >= self._next_check:
            self._next_check = self.size + len(view) + _RESERVE_STEP
            if self.max_bytes is not None and self.size + len(view) > self.max_bytes:
                self.discard()
                raise ReceiveError(f"data set larger than {self.max_bytes} bytes (dicom.max_dataset_bytes)")
            try:
                check_free(self.settings, _RESERVE_STEP)
            except StorageFullError:
                self.discard()
                raise
        if self.journal is not None:
            self.crc = zlib.crc32(view, self.crc)
        try:
            while view:
                n = os.write(self.fd, view)
                self.size += n
                view = view[n:]
        except OSError as exc:
            self.discard()
            raise _io_error(exc, "cannot write instance to the spool") from exc

    def commit(self, rel_path: str, replace: bool = True) -> StoredFile:
        """fsync, rename to ``storage_root / rel_path``, fsync the directory.

        With ``replace=False`` an existing file at ``rel_path`` is never replaced: the file is
        hard-linked into place (atomic, fails when the name exists) and :class:`AlreadyStored` is
        raised with the temporary file still open for :meth:`replace_existing`, :meth:`move_to`
        or :meth:`discard`.

        Raises
        ------
        AlreadyStored
            ``replace=False`` and a file exists at ``rel_path``.
        StorageFullError
            The written file left the disk below the reserve (the file is removed, not kept).
        ReceiveError
            Any other I/O error (the file is removed).
        """
        settings = self.settings
        dest = f"{self.root}/{rel_path}"
        parent = dest.rpartition("/")[0]
        fsync = settings.storage.fsync
        # Journal protocol: a new file is placed unflushed and journalled by make_durable. Replacing
        # an existing file keeps the rename protocol (the old copy must survive until the new one is
        # on disk), as does a file the journal refused.
        deferred = self.journal is not None and not replace and fsync
        try:
            check_free(settings, 0)
            if parent not in _known_dirs:
                _ensure_dir(Path(parent), Path(self.root), fsync)
                _known_dirs.add(parent)
            if fsync and not self._synced and not deferred:
                os.fdatasync(self.fd)
                self._synced = True
            place = os.rename if replace else os.link
            try:
                place(self.tmp, dest)
            except FileNotFoundError:
                # The series directory was removed (retention) since we cached it: recreate once.
                forget_dir_cache()
                _ensure_dir(Path(parent), Path(self.root), fsync)
                _known_dirs.add(parent)
                place(self.tmp, dest)
            except FileExistsError:
                raise AlreadyStored(dest) from None
            if not replace:
                os.unlink(self.tmp)
            if deferred:
                self.pending_rel = rel_path
                return StoredFile(path=Path(dest), rel_path=rel_path, size=self.size)
            if fsync:
                _fsync_dir_cached(parent)
            if self.journal is not None and fsync:
                # A replacement is durable already; its journal record (make_durable) keeps the
                # journal's order authoritative, so a replay never restores the older copy over it.
                self.pending_rel = rel_path
            else:
                os.close(self.fd)
                self.fd = None
        except (StorageFullError, AlreadyStored) as exc:
            if not isinstance(exc, AlreadyStored):
                self.discard()
            raise
        except OSError as exc:
            self.discard()
            raise _io_error(exc, "cannot write instance to the spool") from exc
        return StoredFile(path=Path(dest), rel_path=rel_path, size=self.size)

    def moved(self, rel_path: str) -> None:
        """The placed, not yet durable file was renamed to ``rel_path`` (quarantine)."""
        if self.pending_rel is not None:
            self.pending_rel = rel_path

    def make_durable(self) -> None:
        """Make a file placed by a deferred :meth:`commit` durable before it is acknowledged: one
        journal record covered by a (group) flush, or, when the journal cannot take it, the rename
        protocol's ``fdatasync`` of the file and ``fsync`` of its directory. No-op otherwise.

        Raises
        ------
        ReceiveError
            Neither worked (the instance must not be acknowledged).
        """
        if self.pending_rel is None or self.fd is None:
            return
        from pgsam_node.ingest.journal import JournalUnavailable

        rel, self.pending_rel = self.pending_rel, None
        try:
            try:
                self.journal.write(self.fd, self.size, self.crc, rel)
            except JournalUnavailable as exc:
                log.debug("journal unavailable (%s): flushing the file itself", exc.strerror)
                os.fdatasync(self.fd)
                _fsync_dir_cached(f"{self.root}/{rel}".rpartition("/")[0])
        except OSError as exc:
            raise _io_error(exc, "cannot make the instance durable") from exc
        finally:
            os.close(self.fd)
            self.fd = None

    def replace_existing(self, rel_path: str) -> StoredFile:
        """After :class:`AlreadyStored`: replace the existing file (a same-source re-send)."""
        return self.commit(rel_path, replace=True)

    def same_data_set_as(self, path: str) -> bool:
        """Whether the data set in this file is byte for byte the one in ``path`` (meta ignored)."""
        try:
            with open(path, "rb") as other, open(self.tmp, "rb") as mine:
                if os.fstat(other.fileno()).st_size - _meta_end(other) != self.size - self.meta_len:
                    return False
                mine.seek(self.meta_len)
                while True:
                    a, b = mine.read(1 << 20), other.read(1 << 20)
                    if a != b:
                        return False
                    if not a:
                        return True
        except OSError:
            return False

    def discard(self) -> None:
        """Remove the temporary file (never acknowledged)."""
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


class AlreadyStored(ReceiveError):
    """:meth:`IncomingFile.commit` with ``replace=False`` found a file at the destination."""

    def __init__(self, path: str):
        super().__init__("an instance is already stored at this spool path")
        self.path = path


def _meta_end(fh) -> int:
    """Offset of the data set in an open Part-10 file (after its File Meta group, PS3.10 7.1);
    leaves ``fh`` positioned there."""
    fh.seek(128 + 4 + 8)
    (group_length,) = struct.unpack("<I", fh.read(4))
    end = 128 + 4 + 12 + group_length
    fh.seek(end)
    return end


def quarantine_relpath(sop_uid: str, n: int) -> str:
    """Where a conflicting re-send of ``sop_uid`` is kept (relative to the storage root)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"quarantine/{path_component(sop_uid)}/{stamp}-{os.getpid()}-{n}.dcm"


def _io_error(exc: OSError, what: str) -> ReceiveError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(f"disk full while writing an instance: {exc.strerror}")
    return ReceiveError(f"{what}: {exc.strerror}")


class StorageRootBusy(ReceiveError):
    """Another node process holds the storage root's lock."""


class StorageRootLock:
    """An exclusive ``flock`` on ``<storage root>/.pgsam-node.lock``, held for a node's lifetime.

    Taken before anything touches the storage root (in particular before :func:`clean_tmp`), so a
    second ``serve`` on the same root fails cleanly instead of deleting the live node's
    temporary files. The kernel drops the lock when the process dies, so a crash leaves none.
    """

    NAME = ".pgsam-node.lock"

    def __init__(self, root: Path):
        self.path = Path(root) / self.NAME
        self.fd: int | None = None

    def acquire(self) -> StorageRootLock:
        """Raises :class:`StorageRootBusy` when another process holds it."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise StorageRootBusy(f"storage root {self.path.parent} is in use by another node (pid {holder}); "
                                  "one node per storage root") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def clean_tmp(settings) -> int:
    """Remove temporary files left by a crash (none of them was acknowledged). Returns the count."""
    n = 0
    tmp_dir = settings.tmp_dir
    if not tmp_dir.is_dir():
        return 0
    for p in tmp_dir.iterdir():
        if p.is_file() and p.name.endswith(TMP_SUFFIX):
            try:
                p.unlink()
                n += 1
            except OSError as exc:
                log.warning("cannot remove stale temporary file %s: %s", p.name, exc.strerror)
    if n:
        log.info("removed %d temporary file(s) left by an interrupted transfer", n)
    return n
