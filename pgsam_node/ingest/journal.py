"""Write-ahead journal of received instances: one flush per acknowledgement, shared by every
association (group commit).

The rename protocol (``storage.write_protocol: rename``) needs two flushes per instance: the file's
``fdatasync`` and the directory's ``fsync`` after the rename, each an ext4 journal commit because
the file is new. With ``journal`` (the default) the listener places the file in the spool and
indexes it exactly as before, but flushes neither; it then appends one record to a journal
segment and acknowledges once one ``fdatasync`` of the segment covers the record.

* **Segments** (``<storage>/journal/<generation>.jnl``) are preallocated by writing zeros (or
  recycled), so appending overwrites allocated blocks within the file's size and ``fdatasync``
  writes the data without committing file-system metadata. While no preallocated segment is ready
  (just after start-up, or a disk too small to spare one) the active segment grows, which is as
  durable and only slower.
* **Record** (4 KiB aligned): a header with magic, segment generation, the record's offset, the
  data length, the data's CRC-32, the spool path and the header's own CRC-32, then the complete
  Part-10 file. A torn record (crash during the write) fails a checksum; it was never acknowledged.
* **Group commit**: records are appended under one lock (so they are contiguous and complete in
  order); an association that needs its record durable either finds a flush in progress and
  waits for the next one, or becomes the leader and runs ``fdatasync`` for every record written
  so far, from any association. No dedicated thread: with one association the appender flushes
  itself (no hand-off latency).
* **Checkpoint**: every ``storage.journal_checkpoint_seconds`` a background thread flushes the
  spool files journalled since the last checkpoint and their directories (off the acknowledgement
  path), then records the journal position it covered in ``journal/checkpoint`` and recycles the
  segments before it. Index rows need no flush: ``reindex_spool`` recreates any a power loss
  rolls back, from the then durable files.
* **Recovery** (:func:`recover`, at start-up before the spool is re-indexed): every valid record
  after the checkpoint is checked against the spool; a missing or different file is written again
  from the record (temporary file, ``fdatasync``, rename, directory ``fsync``). Replaying twice
  changes nothing; :func:`pgsam_node.ingest.index.reindex_spool` then indexes the files that have
  no row, so indexing stays exactly-once (one row per SOP Instance UID, keyed by path).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import struct
import threading
import time
import zlib
from pathlib import Path

from pgsam_node.ingest.fsutil import fsync_dir, make_dirs

log = logging.getLogger(__name__)

MAGIC = b"PGSJ"
#: Version 2 adds the append time (CLOCK_MONOTONIC, ns) after the fixed header, so that records of
#: several acceptor processes' journals replay in the order they were written (version-1 records,
#: of one journal, are still read, ordered by position).
VERSION = 2
ALIGN = 4096
#: magic, version, flags, generation, record offset, data length, data CRC-32, path length.
_HEADER = struct.Struct("<4sHHQQQIH")
_STAMP = struct.Struct("<Q")
#: Journal directories of acceptor worker processes: ``<storage>/journal/<ACCEPTOR_PREFIX><n>``.
ACCEPTOR_PREFIX = "acceptor-"
_CRC = struct.Struct("<I")
SEGMENT_SUFFIX = ".jnl"
SPARE_PREFIX = "spare-"
CHECKPOINT = "checkpoint"
#: What a record may name: a spool or quarantine file (never anything outside the storage root).
_REL_RE = re.compile(r"^(spool|quarantine)(/[A-Za-z0-9._-]+)+\.dcm$")
_ZEROS = bytes(1 << 20)


class JournalUnavailable(OSError):
    """The journal cannot take this record (closed, failed flush, disk full): the caller makes the
    file durable by itself (the rename protocol's flushes)."""


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def journal_dir(settings) -> Path:
    """``<storage root>/journal``."""
    return settings.storage_root / "journal"


def acceptor_journal_dir(settings, n: int) -> Path:
    """The journal directory of acceptor worker process ``n`` (``dicom.acceptor_processes`` > 1)."""
    return journal_dir(settings) / f"{ACCEPTOR_PREFIX}{n}"


def journal_dirs(settings) -> list[Path]:
    """Every journal directory of the storage root: the serve process's and each acceptor worker's."""
    main = journal_dir(settings)
    if not main.is_dir():
        return []
    subs = sorted(p for p in main.iterdir() if p.is_dir() and p.name.startswith(ACCEPTOR_PREFIX))
    return [main, *subs]




def _copy(src_fd: int, dst_fd: int, count: int, dst_off: int) -> None:
    """Copy ``count`` bytes from offset 0 of ``src_fd`` to ``dst_off`` of ``dst_fd`` (in the kernel
    when it can)."""
    done = 0
    try:
        while done < count:
            n = os.copy_file_range(src_fd, dst_fd, count - done, done, dst_off + done)
            if n == 0:
                raise OSError(errno.EIO, "source shorter than its recorded size")
            done += n
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    while done < count:
        chunk = os.pread(src_fd, min(1 << 20, count - done), done)
        if not chunk:
            raise OSError(errno.EIO, "source shorter than its recorded size")
        view = memoryview(chunk)
        while view:
            n = os.pwrite(dst_fd, view, dst_off + done)
            done += n
            view = view[n:]


class _Segment:
    def __init__(self, gen: int, path: Path, fd: int, size: int, start_lsn: int):
        self.gen, self.path, self.fd, self.size = gen, path, fd, size
        #: Global position (bytes appended to the journal since open) of this segment's offset 0.
        self.start_lsn = start_lsn
        self.off = 0
        #: Written ahead (zeros or a recycled segment): appends within ``size`` commit no metadata.
        self.prealloc = size > 0


class Journal:
    """The write-ahead journal of one listener (see the module docstring).

    Parameters
    ----------
    settings
        Node settings: ``storage.root``, ``storage.journal_segment_bytes``,
        ``storage.journal_checkpoint_seconds``, ``storage.min_free_bytes``.
    directory
        The journal's directory; default ``<storage>/journal``. An acceptor worker process has its
        own (:func:`acceptor_journal_dir`): the serve process recovered every directory before it
        started the workers, and a worker that replaces a dead one only settles what its
        predecessor left (:func:`settle`), because other processes are writing the spool.
    """

    def __init__(self, settings, directory: Path | None = None):
        self.settings = settings
        self.dir = directory if directory is not None else journal_dir(settings)
        self._own_dir = directory is not None
        self.root = settings.storage_root
        self.segment_bytes = settings.storage.journal_segment_bytes
        self.interval = settings.storage.journal_checkpoint_seconds
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._written = 0  # global position after the last complete record
        self._durable = 0  # global position covered by a completed fdatasync
        self._flushing = False
        self._failed: str | None = None
        self._closed = False
        self._active: _Segment | None = None
        self._old: list[_Segment] = []  # segments before the active one, not yet checkpointed
        self._ready: _Segment | None = None  # preallocated, waiting to become active
        self._checkpointed = 0
        #: Spool paths journalled since the last checkpoint (what it must flush).
        self._unsynced: list[str] = []
        self._wake = threading.Event()
        #: Flush statistics (for benchmarks and status): flushes, records, seconds in fdatasync.
        self.stats = {"flushes": 0, "records": 0, "flush_seconds": 0.0}
        self._threads: list[threading.Thread] = []

    # ---- lifecycle ------------------------------------------------------------------------------
    def open(self) -> Journal:
        """Recover what an earlier process left (:func:`recover`), then start a new generation."""
        if self._own_dir:
            settle(self.settings, self.dir)
        else:
            recover(self.settings)
        # A new journal directory's entry (and its parent's) must be durable before the first
        # record it holds is acknowledged.
        make_dirs(self.dir, self.root)
        # Generations only grow (spares and the checkpoint included): a recycled segment's old
        # records must never carry the generation it is reused under.
        gens = [g for g, _ in _segments(self.dir)] + [_read_checkpoint(self.dir)[0]]
        gens += [int(p.name[len(SPARE_PREFIX):-len(SEGMENT_SUFFIX)]) for p in self.dir.glob(
            f"{SPARE_PREFIX}*{SEGMENT_SUFFIX}") if p.name[len(SPARE_PREFIX):-len(SEGMENT_SUFFIX)].isdigit()]
        self._gen = max(gens, default=0)
        # Everything before is recovered and synced: the old segments become spares.
        for gen, path in _segments(self.dir):
            if path.stat().st_size >= self.segment_bytes // 2:
                os.rename(path, self.dir / f"{SPARE_PREFIX}{gen}{SEGMENT_SUFFIX}")
            else:
                path.unlink()
        self._active = self._new_segment(prealloc=False)
        self._write_checkpoint(self._active.gen, 0)
        for name, target in (("journal-prepare", self._prepare_loop), ("journal-checkpoint", self._checkpoint_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def close(self, checkpoint: bool = True) -> None:
        """Checkpoint everything written and stop the background threads.

        ``checkpoint=False`` leaves the journal as a crash would (tests of recovery)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
        self._wake.set()
        for t in self._threads:
            t.join(30)
        try:
            if checkpoint:
                self._checkpoint()
        except OSError as exc:
            log.warning("journal: final checkpoint failed (%s); the next start-up replays the journal", exc.strerror)
        st = self.stats
        if st["flushes"]:
            log.info("journal: %d records in %d flushes (%.2f records per flush, %.3f ms per flush)", st["records"],
                     st["flushes"], st["records"] / st["flushes"], st["flush_seconds"] / st["flushes"] * 1000)
        for seg in [*self._old, self._active, self._ready]:
            if seg is not None:
                os.close(seg.fd)
        self._old, self._active, self._ready = [], None, None

    # ---- segments -------------------------------------------------------------------------------
    def _new_segment(self, prealloc: bool) -> _Segment:
        with self._lock:
            self._gen += 1
            gen = self._gen
        path = self.dir / f"{gen:020d}{SEGMENT_SUFFIX}"
        size = 0
        spare = next(iter(sorted(self.dir.glob(f"{SPARE_PREFIX}*{SEGMENT_SUFFIX}"))), None) if prealloc else None
        if spare is not None:
            os.rename(spare, path)  # its old records carry another generation: never replayed
            fd = os.open(path, os.O_RDWR)
            size = os.fstat(fd).st_size
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
            if prealloc:
                try:
                    while size < self.segment_bytes:
                        if self._closed:  # stopping: do not hold the listener's shutdown up
                            raise OSError(errno.ECANCELED, "journal closed")
                        size += os.write(fd, _ZEROS)
                    os.fsync(fd)  # the blocks and the size are committed once, here
                except OSError:
                    os.close(fd)
                    os.unlink(path)
                    raise
        fsync_dir(self.dir)
        return _Segment(gen, path, fd, size, 0)

    def _prealloc_allowed(self) -> bool:
        free = shutil.disk_usage(self.root).free - self.settings.storage.min_free_bytes
        return free > 4 * self.segment_bytes

    def _prepare_loop(self) -> None:
        """Keep one preallocated segment ready (a spare renamed, or zeros written)."""
        while not self._closed:
            if self._ready is None:
                has_spare = any(self.dir.glob(f"{SPARE_PREFIX}*{SEGMENT_SUFFIX}"))
                if has_spare or self._prealloc_allowed():
                    try:
                        seg = self._new_segment(prealloc=True)
                    except OSError as exc:
                        if self._closed:
                            return
                        log.warning("journal: cannot prepare a segment: %s", exc.strerror)
                    else:
                        with self._lock:
                            if self._closed:
                                os.close(seg.fd)
                                os.unlink(seg.path)
                                return
                            self._ready = seg
            self._wake.wait(1.0)
            self._wake.clear()

    def _switch(self, need: int) -> None:
        """Under the lock: make the ready segment active when the active one is full or was
        never preallocated. The old segment is flushed first, so every record before the switch is
        durable and recovery can stop at the first invalid record of a segment."""
        act = self._active
        if self._ready is None or (act.prealloc and (act.off + need <= act.size or act.off == 0)):
            return  # it fits, or nothing better is ready (the active segment grows)
        if act.off > 0:
            os.fdatasync(act.fd)
            self._durable = max(self._durable, self._written)
            self._cv.notify_all()
            self._old.append(act)
        else:
            os.close(act.fd)
            os.unlink(act.path)
        ready, self._ready = self._ready, None
        ready.start_lsn = self._written
        self._active = ready
        self._wake.set()

    # ---- appending ------------------------------------------------------------------------------
    def append(self, src_fd: int, size: int, crc: int, rel_path: str) -> int:
        """Copy a placed spool file (``size`` bytes from offset 0 of ``src_fd``, CRC-32 ``crc``)
        into the journal as one record; returns the position :meth:`wait` must reach.

        Raises
        ------
        JournalUnavailable
            Closed, failed earlier, or the record could not be written.
        """
        path = rel_path.encode()
        with self._lock:
            if self._closed or self._failed:
                raise JournalUnavailable(errno.EIO, self._failed or "journal closed")
            stamp = _STAMP.pack(time.monotonic_ns()) if VERSION >= 2 else b""
            head_len = _align(_HEADER.size + len(stamp) + len(path) + _CRC.size)
            need = head_len + _align(size)
            try:
                self._switch(need)
                seg = self._active
                head = (_HEADER.pack(MAGIC, VERSION, 0, seg.gen, seg.off, size, crc, len(path))
                        + stamp + path)
                head += _CRC.pack(zlib.crc32(head))
                _copy(src_fd, seg.fd, size, seg.off + head_len)
                os.pwrite(seg.fd, head, seg.off)
            except OSError as exc:
                # Nothing counts as written: the next record overwrites this one's place.
                raise JournalUnavailable(exc.errno or errno.EIO, f"journal append: {exc.strerror}") from exc
            seg.off += need
            self._written = seg.start_lsn + seg.off
            self._unsynced.append(rel_path)
            self.stats["records"] += 1
            return self._written

    def wait(self, lsn: int) -> None:
        """Return once an ``fdatasync`` has covered position ``lsn`` (leading one when none runs).

        Raises
        ------
        JournalUnavailable
            The flush failed (this and every later record take the rename protocol's flushes).
        """
        with self._cv:
            while self._durable < lsn:
                if self._failed:
                    raise JournalUnavailable(errno.EIO, self._failed)
                if self._flushing:
                    self._cv.wait()
                    continue
                self._flushing = True
                target, seg = self._written, self._active
                self._lock.release()
                err = None
                t0 = time.perf_counter()
                try:
                    os.fdatasync(seg.fd)
                except OSError as exc:
                    err = exc
                finally:
                    self._lock.acquire()
                self._flushing = False
                self.stats["flushes"] += 1
                self.stats["flush_seconds"] += time.perf_counter() - t0
                if err is not None and seg is not self._active and err.errno == errno.EBADF:
                    err = None  # switched and retired meanwhile: the switch flushed it (target <= switch)
                if err is not None:
                    # After a failed fsync the pages' state is unknown: never trust this journal again.
                    self._failed = f"journal fdatasync failed: {err.strerror}"
                    log.error("%s; instances now take the rename protocol's flushes", self._failed)
                else:
                    self._durable = max(self._durable, target)
                self._cv.notify_all()

    def write(self, src_fd: int, size: int, crc: int, rel_path: str) -> None:
        """:meth:`append` then :meth:`wait`: the file is recoverable when this returns."""
        self.wait(self.append(src_fd, size, crc, rel_path))

    # ---- checkpoint -----------------------------------------------------------------------------
    def _checkpoint_loop(self) -> None:
        while not self._closed:
            self._sleep(self.interval)
            if self._closed:
                return
            try:
                self._checkpoint()
            except OSError as exc:
                log.warning("journal checkpoint failed: %s (retried)", exc.strerror)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._closed and time.monotonic() < end:
            time.sleep(min(0.5, end - time.monotonic()))

    def _checkpoint(self) -> None:
        """Make everything journalled durable in the spool itself, then let the journal forget it."""
        with self._lock:
            act = self._active
            if act is None or self._written == self._checkpointed:
                return
            lsn, gen, off = self._written, act.gen, act.off
            old = list(self._old)
            paths, self._unsynced = self._unsynced, []
        # Records are appended only after their file is placed (and indexed), so flushing those
        # files and their directories makes everything up to ``lsn`` durable without the journal.
        # Per file, not syncfs: a shared file system's other dirty data is not ours to wait for.
        # Index rows need no flush here: reindex_spool recreates any a power loss rolls back.
        try:
            _flush_files(self.root, paths)
        except OSError:
            with self._lock:
                self._unsynced[:0] = paths  # retried at the next checkpoint
            raise
        self._write_checkpoint(gen, off)
        with self._lock:
            self._checkpointed = lsn
            self._old = [s for s in self._old if s not in old]
        for seg in old:
            os.close(seg.fd)
            os.rename(seg.path, self.dir / f"{SPARE_PREFIX}{seg.gen}{SEGMENT_SUFFIX}")
        if old:
            fsync_dir(self.dir)
            self._wake.set()

    def _write_checkpoint(self, gen: int, off: int) -> None:
        _write_checkpoint(self.dir, gen, off)


def _write_checkpoint(directory: Path, gen: int, off: int) -> None:
    """Atomically record that every record before (``gen``, ``off``) is durable in the spool."""
    tmp = directory / (CHECKPOINT + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, f"{gen} {off}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, directory / CHECKPOINT)
    fsync_dir(directory)


def _flush_files(root: Path, rel_paths: list[str]) -> None:
    """fdatasync each file still present (moved or deleted ones need nothing), then fsync their
    directories."""
    dirs = set()
    for rel in rel_paths:
        path = f"{root}/{rel}"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        dirs.add(path.rpartition("/")[0])
    for d in dirs:
        try:
            fsync_dir(Path(d))
        except FileNotFoundError:
            continue


# ---- recovery ----------------------------------------------------------------------------------
def _segments(directory: Path) -> list[tuple[int, Path]]:
    out = []
    for p in directory.glob(f"*{SEGMENT_SUFFIX}"):
        if p.name[:-len(SEGMENT_SUFFIX)].isdigit():
            out.append((int(p.name[:-len(SEGMENT_SUFFIX)]), p))
    return sorted(out)


def _read_checkpoint(directory: Path) -> tuple[int, int]:
    try:
        gen, off = (directory / CHECKPOINT).read_text().split()
        return int(gen), int(off)
    except (OSError, ValueError):
        return 0, 0


def read_records(path: Path, gen: int, start: int = 0):
    """Yield ``(rel_path, offset_of_data, size, crc)`` for each valid record of a segment from
    ``start``, stopping at the first invalid one (zeros, a record of an earlier use of a
    recycled segment, or a torn record: never acknowledged)."""
    for rel, data_off, size, crc, _stamp in _read_records(path, gen, start):
        yield rel, data_off, size, crc


def _read_records(path: Path, gen: int, start: int = 0):
    """:func:`read_records` with each record's append time (0 for a version-1 record)."""
    with open(path, "rb") as fh:
        end = os.fstat(fh.fileno()).st_size
        off = start
        while off + _HEADER.size <= end:
            fh.seek(off)
            raw = fh.read(_HEADER.size)
            magic, version, _flags, rgen, roff, size, crc, plen = _HEADER.unpack(raw)
            if magic != MAGIC or version not in (1, 2) or rgen != gen or roff != off:
                return
            extra = _STAMP.size if version == 2 else 0
            rest = fh.read(extra + plen + _CRC.size)
            if len(rest) != extra + plen + _CRC.size or (
                    _CRC.unpack(rest[extra + plen:])[0] != zlib.crc32(raw + rest[:extra + plen])):
                return
            stamp = _STAMP.unpack(rest[:extra])[0] if extra else 0
            head_len = _align(_HEADER.size + extra + plen + _CRC.size)
            data_off = off + head_len
            if data_off + size > end or _file_crc(fh, data_off, size) != crc:
                return
            rel = rest[extra:extra + plen].decode("ascii", "replace")
            yield rel, data_off, size, crc, stamp
            off = data_off + _align(size)


def _file_crc(fh, offset: int, size: int) -> int:
    fh.seek(offset)
    crc, left = 0, size
    while left:
        chunk = fh.read(min(1 << 20, left))
        if not chunk:
            return -1
        crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
    return crc


def _matches(path: Path, size: int, crc: int) -> bool:
    try:
        with open(path, "rb") as fh:
            return os.fstat(fh.fileno()).st_size == size and _file_crc(fh, 0, size) == crc
    except OSError:
        return False


def _pending_records(directory: Path) -> list[tuple[int, int, Path, str, int, int, int]]:
    """The valid records after a directory's checkpoint: ``(stamp, position, segment, rel,
    data offset, size, crc)``, position counting records in the order they were appended."""
    cp_gen, cp_off = _read_checkpoint(directory)
    records = []
    for gen, seg_path in _segments(directory):
        if gen < cp_gen:
            continue
        for rel, data_off, size, crc, stamp in _read_records(seg_path, gen, cp_off if gen == cp_gen else 0):
            if not _REL_RE.match(rel) or ".." in rel.split("/"):
                log.error("journal record with an unexpected path ignored")
                continue
            records.append((stamp, len(records), seg_path, rel, data_off, size, crc))
    return records


def _forget(directory: Path) -> None:
    """Move a directory's checkpoint past every record it holds."""
    segs = _segments(directory)
    if segs:
        _write_checkpoint(directory, max(g for g, _ in segs) + 1, 0)


def settle(settings, directory: Path) -> int:
    """After an acceptor worker process died (the machine did not): flush the spool files its
    journal records after the checkpoint and move the checkpoint past them. Nothing is written
    back: the page cache survived, so every file it placed is there or was since replaced by
    another process (writing an older copy back could undo that). Returns the records settled."""
    if not directory.is_dir():
        return 0
    records = _pending_records(directory)
    if records:
        _flush_files(settings.storage_root, [r[3] for r in records])
        _forget(directory)
    return len(records)


def recover(settings) -> int:
    """Write back every journalled instance missing or different in the spool (start-up, before
    :func:`pgsam_node.ingest.index.reindex_spool`), from every journal directory (the serve
    process's and each acceptor worker's, merged in append order). Idempotent. Returns the
    number of files written back.
    """
    dirs = journal_dirs(settings)
    if not dirs:
        return 0
    root = settings.storage_root
    merged: list[tuple[tuple[int, int, int], tuple[Path, str, int, int, int]]] = []
    for n, directory in enumerate(dirs):
        for stamp, pos, seg_path, rel, data_off, size, crc in _pending_records(directory):
            merged.append(((stamp, n, pos), (seg_path, rel, data_off, size, crc)))
    # One journal: its append order. Several (acceptor processes): the append time, which one
    # CLOCK_MONOTONIC gives every process (all records after the checkpoints are from one run).
    merged.sort(key=lambda r: r[0])
    records = [r[1] for r in merged]
    # A spool file is named after its SOP Instance UID: only an instance's last spool record counts
    # (a re-send moved into another series removed the older file; it must not come back).
    last = {rel.rpartition("/")[2]: i for i, (_, rel, *_rest) in enumerate(records) if rel.startswith("spool/")}
    restored = 0
    touched: set[Path] = set()
    for i, (seg_path, rel, data_off, size, crc) in enumerate(records):
        if rel.startswith("spool/") and last[rel.rpartition("/")[2]] != i:
            continue
        dest = root / rel
        if _matches(dest, size, crc):
            continue
        _restore(seg_path, data_off, size, dest, settings.tmp_dir, root)
        touched.add(dest.parent)
        restored += 1
    for d in touched:
        fsync_dir(d)
    if records:
        # Files that were still there (a process crash keeps the page cache) may not be on the
        # disk yet: flush once before the journal forgets them, then move the checkpoint past them.
        os.sync()
        for directory in dirs:
            if _segments(directory):
                _forget(directory)
    if restored:
        log.warning("journal: wrote back %d acknowledged instance(s) missing from the spool", restored)
    return restored


def _restore(seg_path: Path, data_off: int, size: int, dest: Path, tmp_dir: Path, root: Path) -> None:
    tmp_dir.mkdir(parents=True, exist_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"journal-{os.getpid()}-{dest.name}.part"
    with open(seg_path, "rb") as src, open(tmp, "wb") as out:
        src.seek(data_off)
        left = size
        while left:
            chunk = src.read(min(1 << 20, left))
            out.write(chunk)
            left -= len(chunk)
        out.flush()
        os.fdatasync(out.fileno())
    os.rename(tmp, dest)
    p = dest.parent
    while p != root and p != p.parent:  # directories the restore created must survive too
        fsync_dir(p.parent)
        p = p.parent
