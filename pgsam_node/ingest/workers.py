"""Acceptor worker processes (``dicom.acceptor_processes`` > 1): several processes serve the DICOM
port, so parallel associations are not limited to one interpreter's GIL.

Shape (docs/ingest.md, "Parallel associations: acceptor worker processes"):

* The serve process binds and listens on the port once, then starts N workers
  (``python -m pgsam_node.ingest.workers``, a fresh interpreter each: no fork of a threaded
  process) that inherit the **listening socket** and all accept on it (pre-fork, as gunicorn or
  Apache do): the kernel's one accept queue feeds whichever worker takes the connection first, so
  a busy worker takes fewer, no connection waits in a dead worker's queue, and ``dicom.port: 0``
  works. (``SO_REUSEPORT`` would give each worker its own queue, filled by a hash of the peer's
  address: uneven with a few associations, and lost with a worker that dies.)
* Each worker is a complete :class:`~pgsam_node.ingest.listener.Listener` (same policy, statuses,
  spool and index code, so malformed input is refused as strictly as in one process) with its
  **own journal directory** ``<storage>/journal/acceptor-<n>``; every worker indexes its own
  instances (SQLite: under one cross-process writer lock, :func:`pgsam_node.ingest.index.share_write_lock`;
  PostgreSQL: row locks as between threads).
* **Limits stay node-wide**: the connection and association counts (``max_pending_connections``,
  ``max_pending_per_host``, ``max_associations``, ``max_associations_per_host``) are kept by the
  serve process; a worker asks it over a control socket when a connection arrives, when it
  associates and when it ends (:class:`RemoteGate`). A worker that dies has its counts dropped.
* **Lifetime**: a worker reads a "lifeline" pipe from the serve process: ``s`` = stop (graceful:
  open associations end, the journal is checkpointed); end of file = the serve process is gone.
  Workers also ask the kernel to kill them when their parent dies (``PR_SET_PDEATHSIG``), and they
  inherit the storage root's ``flock``: a new ``serve`` cannot start on the root while any of them
  still runs. A worker that dies is logged (index, pid, exit status: no patient data) and started
  again; its successor settles the dead one's journal (:func:`pgsam_node.ingest.journal.settle`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

#: Seconds a worker gets to stop gracefully before it is killed.
STOP_TIMEOUT = 20.0
#: Seconds the serve process waits for its workers to be ready at start-up.
START_TIMEOUT = 180.0
#: Restart back-off after a worker died (doubles for each death within a minute, capped).
_RESTART_MIN, _RESTART_MAX = 0.2, 30.0
_COUNTER_KEYS = ("stored", "failed", "rejected", "quarantined")


class _Counts:
    """Pending and established connections, in total and per peer host, for every worker (the
    same rules as one :class:`~pgsam_node.ingest.dicomnet.acceptor.Acceptor` counts them)."""

    def __init__(self, d):
        self.max_pending, self.max_pending_per_host = d.max_pending_connections, d.max_pending_per_host
        self.max_assoc, self.max_assoc_per_host = d.max_associations, d.max_associations_per_host
        self.pending = self.active = 0
        self.pending_by_host: dict[str, int] = {}
        self.active_by_host: dict[str, int] = {}
        #: Per worker: what it holds, to drop when it dies.
        self.held: dict[int, dict[tuple[str, str], int]] = {}

    def _add(self, w: int, kind: str, host: str, n: int) -> None:
        by_host = self.pending_by_host if kind == "p" else self.active_by_host
        if kind == "p":
            self.pending += n
        else:
            self.active += n
        left = by_host.get(host, 0) + n
        if left > 0:
            by_host[host] = left
        else:
            by_host.pop(host, None)
        held = self.held.setdefault(w, {})
        h = held.get((kind, host), 0) + n
        if h > 0:
            held[(kind, host)] = h
        else:
            held.pop((kind, host), None)

    def pend(self, w: int, host: str) -> str | None:
        if self.pending >= self.max_pending:
            return f"{self.pending} connections already waiting to associate (dicom.max_pending_connections)"
        if self.pending_by_host.get(host, 0) >= self.max_pending_per_host:
            return "too many connections from this host waiting to associate (dicom.max_pending_per_host)"
        self._add(w, "p", host, 1)
        return None

    def unpend(self, w: int, host: str) -> None:
        if self.held.get(w, {}).get(("p", host)):
            self._add(w, "p", host, -1)

    def admit(self, w: int, host: str) -> str | None:
        if self.active >= self.max_assoc:
            return f"{self.max_assoc} associations already open"
        if self.active_by_host.get(host, 0) >= self.max_assoc_per_host:
            return f"{self.max_assoc_per_host} associations already open from this host"
        self._add(w, "a", host, 1)
        self.unpend(w, host)
        return None

    def leave(self, w: int, host: str) -> None:
        if self.held.get(w, {}).get(("a", host)):
            self._add(w, "a", host, -1)

    def drop(self, w: int) -> None:
        """Worker ``w`` died: its connections are gone with it."""
        for (kind, host), n in list(self.held.get(w, {}).items()):
            self._add(w, kind, host, -n)
        self.held.pop(w, None)


class _Worker:
    """The serve process's handle on one worker."""

    def __init__(self, n: int):
        self.n = n
        self.proc: subprocess.Popen | None = None
        self.ctrl: socket.socket | None = None
        self.lifeline: int | None = None
        self.buf = b""
        self.ready = False
        self.counters = dict.fromkeys(_COUNTER_KEYS, 0)
        self.restart_at: float | None = None
        self.deaths: list[float] = []


class AcceptorPool:
    """The DICOM port served by ``dicom.acceptor_processes`` worker processes (see the module
    docstring). Same surface as the :class:`~pgsam_node.ingest.listener.Listener` the serve
    process uses otherwise: :meth:`start`, :meth:`stop`, :attr:`port`, :attr:`counters`.

    Parameters
    ----------
    settings
        Node settings (``dicom.*``, ``storage.*``, ``database.*``).
    on_release
        Optional callback ``f(study_uids: set[str])`` for an association that stored instances
        and ended (forwarded from the worker that served it).
    inherit_fds
        Descriptors every worker keeps open (the storage root lock).
    sock
        The DICOM port's listening socket when ``serve`` bound it already; None: bound in
        :meth:`start`.
    """

    def __init__(self, settings, on_release: Callable[[set[str]], None] | None = None,
                 inherit_fds: tuple[int, ...] = (), sock: socket.socket | None = None):
        self.settings = settings
        self.on_release = on_release
        self.inherit_fds = tuple(inherit_fds)
        self.n = settings.dicom.acceptor_processes
        self._counts = _Counts(settings.dicom)
        self._lock = threading.Lock()
        self._workers = [_Worker(i) for i in range(1, self.n + 1)]
        self._sock: socket.socket | None = sock
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._failed: str | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._dead_counters = dict.fromkeys(_COUNTER_KEYS, 0)
        #: Workers started again after they died (for status and tests).
        self.restarts = 0

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Listen on the port, start the workers, and return once each is accepting.

        Raises
        ------
        OSError
            The port cannot be bound (as the single-process listener).
        ReceiveError
            A worker failed to start (its log lines say why).
        """
        from pgsam_node.errors import ReceiveError

        d = self.settings.dicom
        if self._sock is None:
            self._sock = socket.create_server((d.bind, d.port), backlog=128)
        # Every worker polls the socket and one wins each connection; the others' accept() must
        # not block (O_NONBLOCK is shared by every process holding the socket).
        self._sock.setblocking(False)
        self._thread = threading.Thread(target=self._supervise, name="acceptor-supervisor", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._failed:
            why = self._failed or f"not every acceptor worker was ready within {timeout:g} s"
            self.stop()
            raise ReceiveError(f"DICOM acceptor workers: {why}")
        log.info("DICOM listener %s on %s:%d, %d acceptor processes (pids %s)", d.ae_title, d.bind, self.port,
                 self.n, ", ".join(str(w.proc.pid) for w in self._workers if w.proc))

    def stop(self) -> None:
        """Stop every worker (gracefully, then by force), then close the port."""
        if self._thread is None:
            return
        self._stopping.set()
        os.write(self._wake_w, b"x")
        self._thread.join(STOP_TIMEOUT + 10)
        self._thread = None
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        log.info("DICOM listener stopped (%d acceptor processes)", self.n)

    @property
    def port(self) -> int:
        """The bound TCP port (useful with ``dicom.port: 0``)."""
        if self._sock is None:
            return self.settings.dicom.port
        return self._sock.getsockname()[1]

    @property
    def counters(self) -> dict[str, int]:
        """Stored / failed / rejected / quarantined since start, over every worker (reported by
        each worker about once a second, and when it stops)."""
        with self._lock:
            out = dict(self._dead_counters)
            for w in self._workers:
                for k in _COUNTER_KEYS:
                    out[k] += w.counters.get(k, 0)
        return out

    @property
    def active_association_count(self) -> int:
        """Associations established now, over every worker."""
        with self._lock:
            return self._counts.active

    def worker_pids(self) -> list[int]:
        """The workers' process ids (those running now)."""
        return [w.proc.pid for w in self._workers if w.proc is not None and w.proc.poll() is None]

    # ---- the supervisor thread -------------------------------------------------------------------
    def _spawn(self, w: _Worker) -> None:
        """Start worker ``w`` (from the supervisor thread: PR_SET_PDEATHSIG follows that thread)."""
        import pgsam_node

        parent_end, child_end = socket.socketpair()
        life_r, life_w = os.pipe()
        pkg_parent = str(Path(pgsam_node.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH", "")) if p)
        fds = (self._sock.fileno(), child_end.fileno(), life_r, *self.inherit_fds)
        cmd = [sys.executable, "-m", "pgsam_node.ingest.workers", "--index", str(w.n), "--listen-fd",
               str(self._sock.fileno()), "--control-fd", str(child_end.fileno()), "--lifeline-fd", str(life_r),
               "--parent", str(os.getpid())]
        try:
            proc = subprocess.Popen(cmd, pass_fds=fds, env=env, stdin=subprocess.DEVNULL)
        finally:
            child_end.close()
            os.close(life_r)
        settings_json = self.settings.model_dump_json(by_alias=True)
        parent_end.sendall(settings_json.encode() + b"\n")
        parent_end.setblocking(False)
        log.info("acceptor worker %d started (pid %d)", w.n, proc.pid)
        w.proc, w.ctrl, w.lifeline, w.buf, w.ready = proc, parent_end, life_w, b"", False
        w.counters = dict.fromkeys(_COUNTER_KEYS, 0)
        w.restart_at = None

    def _supervise(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            # The first worker alone, then the others once it accepts: started together they
            # would share the CPU while importing, and the first association would wait for all.
            first, later = self._workers[0], list(self._workers[1:])
            self._spawn(first)
            sel.register(first.ctrl, selectors.EVENT_READ, first)
            while not self._stopping.is_set():
                for key, _ in sel.select(timeout=0.2):
                    if key.data is not None:
                        self._read(key.data, sel)
                if later and first.ready:
                    for w in later:
                        self._spawn(w)
                        sel.register(w.ctrl, selectors.EVENT_READ, w)
                    later = []
                self._check(sel)
        except Exception:  # noqa: BLE001 - the supervisor must stop the workers whatever happened
            log.exception("acceptor supervisor failed")
            self._failed = self._failed or "the supervisor failed"
            self._ready.set()
        finally:
            self._stop_workers(sel)
            sel.close()

    def _read(self, w: _Worker, sel) -> None:
        try:
            data = w.ctrl.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            sel.unregister(w.ctrl)
            w.ctrl.close()
            w.ctrl = None
            return
        w.buf += data
        while b"\n" in w.buf:
            line, w.buf = w.buf.split(b"\n", 1)
            try:
                msg = json.loads(line)
                reply = self._handle(w, msg)
            except Exception:  # noqa: BLE001 - a bad message must not stop the supervisor
                log.exception("acceptor worker %d: bad control message", w.n)
                reply = None
            if reply is not False:
                try:
                    w.ctrl.setblocking(True)
                    w.ctrl.sendall(json.dumps({"r": reply}).encode() + b"\n")
                except OSError:
                    pass
                finally:
                    if w.ctrl is not None:
                        w.ctrl.setblocking(False)

    def _handle(self, w: _Worker, msg: dict):
        op = msg.get("op")
        host = str(msg.get("host", ""))
        with self._lock:
            if op == "pend":
                return self._counts.pend(w.n, host)
            if op == "unpend":
                return self._counts.unpend(w.n, host)
            if op == "admit":
                return self._counts.admit(w.n, host)
            if op == "leave":
                return self._counts.leave(w.n, host)
            if op == "counters":
                w.counters = {k: int(msg.get(k, 0)) for k in _COUNTER_KEYS}
                return None
            if op == "ready":
                w.ready = True
                if all(x.ready for x in self._workers):
                    self._ready.set()
                return None
        if op == "released":
            if self.on_release is not None:
                try:
                    self.on_release(set(msg.get("studies", [])))
                except Exception:  # noqa: BLE001 - a hint must never break the listener
                    log.exception("association-release hook failed")
            return None
        log.warning("acceptor worker %d: unknown control message", w.n)
        return None

    def _check(self, sel) -> None:
        now = time.monotonic()
        for w in self._workers:
            if w.proc is not None:
                code = w.proc.poll()
                if code is None:
                    continue
                self._died(w, code, sel)
            if w.restart_at is not None and now >= w.restart_at and not self._stopping.is_set():
                try:
                    self._spawn(w)
                except OSError as exc:
                    log.error("acceptor worker %d cannot be started again: %s (retried)", w.n, exc.strerror)
                    w.restart_at = now + _RESTART_MAX
                    continue
                sel.register(w.ctrl, selectors.EVENT_READ, w)
                self.restarts += 1

    def _died(self, w: _Worker, code: int, sel) -> None:
        from pgsam_node.ingest.spool import TMP_SUFFIX

        pid = w.proc.pid
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        if w.ctrl is not None:
            sel.unregister(w.ctrl)
            w.ctrl.close()
            w.ctrl = None
        if w.lifeline is not None:
            os.close(w.lifeline)
            w.lifeline = None
        with self._lock:
            self._counts.drop(w.n)
            for k in _COUNTER_KEYS:
                self._dead_counters[k] += w.counters.get(k, 0)
            w.counters = dict.fromkeys(_COUNTER_KEYS, 0)
        w.proc = None
        # Its temporary files were never acknowledged (the whole-node start-up removes them too).
        try:
            for entry in os.scandir(self.settings.tmp_dir):
                if entry.name.startswith(f"{pid}-") and entry.name.endswith(TMP_SUFFIX):
                    os.unlink(entry.path)
        except OSError:
            pass
        if not w.ready and not self._ready.is_set():
            # It died before it was ready at start-up: a configuration or environment problem that
            # a restart would only repeat.
            self._failed = f"worker {w.n} (pid {pid}) ended during start-up with {how}"
            self._ready.set()
            return
        now = time.monotonic()
        w.deaths = [t for t in w.deaths if now - t < 60] + [now]
        delay = min(_RESTART_MAX, _RESTART_MIN * 2 ** (len(w.deaths) - 1))
        w.restart_at = now + delay
        log.error("acceptor worker %d (pid %d) ended with %s; starting it again in %.1f s", w.n, pid, how, delay)

    def _stop_workers(self, sel) -> None:
        try:
            sel.unregister(self._wake_r)  # readable from now on: it would turn the wait below into a spin
        except (KeyError, ValueError):
            pass
        live = [w for w in self._workers if w.proc is not None]
        for w in live:
            try:
                os.write(w.lifeline, b"s")
            except OSError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(w.proc.poll() is None for w in live) and time.monotonic() < deadline:
            # Keep answering their control messages (final counters, releases) while they stop.
            for key, _ in sel.select(timeout=0.1):
                if key.data is not None and key.data.ctrl is not None:
                    self._read(key.data, sel)
        for w in live:
            if w.proc.poll() is None:
                log.error("acceptor worker %d (pid %d) did not stop in %g s; killed", w.n, w.proc.pid, STOP_TIMEOUT)
                w.proc.kill()
                w.proc.wait()
            with self._lock:
                self._counts.drop(w.n)
            if w.ctrl is not None:
                try:
                    sel.unregister(w.ctrl)
                except (KeyError, ValueError):
                    pass
                w.ctrl.close()
                w.ctrl = None
            if w.lifeline is not None:
                os.close(w.lifeline)
                w.lifeline = None


# ---- the worker process --------------------------------------------------------------------------
class RemoteGate:
    """A worker's side of the node-wide limits: one request and its answer at a time over the
    control socket (an association costs three round trips; an instance none)."""

    def __init__(self, ctrl: socket.socket, first: bytes = b""):
        self.ctrl = ctrl
        self._lock = threading.Lock()
        self._buf = first

    def call(self, op: str, **fields):
        with self._lock:
            self.ctrl.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
            while b"\n" not in self._buf:
                data = self.ctrl.recv(65536)
                if not data:
                    raise ConnectionResetError("the serve process closed the control socket")
                self._buf += data
            line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)["r"]

    def pend(self, host: str) -> str | None:
        return self.call("pend", host=host)

    def unpend(self, host: str) -> None:
        self.call("unpend", host=host)

    def admit(self, host: str) -> str | None:
        return self.call("admit", host=host)

    def leave(self, host: str) -> None:
        self.call("leave", host=host)


def _die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGKILL when the serve process dies (Linux); exit if it already has."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the lifeline pipe still ends the worker
    if os.getppid() != parent:
        os._exit(3)


def worker_main(argv: list[str] | None = None) -> int:
    """Entry point of one acceptor worker process (started by :class:`AcceptorPool`)."""
    ap = argparse.ArgumentParser(prog="pgsam_node.ingest.workers")
    ap.add_argument("--index", type=int, required=True)
    ap.add_argument("--listen-fd", type=int, required=True)
    ap.add_argument("--control-fd", type=int, required=True)
    ap.add_argument("--lifeline-fd", type=int, required=True)
    ap.add_argument("--parent", type=int, required=True)
    args = ap.parse_args(argv)
    _die_with_parent(args.parent)
    # Ctrl-C reaches the whole process group: the serve process stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    # The serve process stops its workers (lifeline); SIGTERM to the whole group (systemd) must
    # not end them before it does. SIGKILL still ends one (and it is started again).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    ctrl = socket.socket(fileno=args.control_fd)
    buf = b""
    while b"\n" not in buf:
        data = ctrl.recv(1 << 20)
        if not data:
            return 3
        buf += data
    line, rest = buf.split(b"\n", 1)

    from pgsam_node.config import Settings
    from pgsam_node.logsetup import setup_logging

    settings = Settings.model_validate_json(line)
    setup_logging(settings.logging.level, settings.logging.json_format)
    wlog = logging.getLogger(f"pgsam_node.ingest.workers.{args.index}")

    from pgsam_node.db.session import Database
    from pgsam_node.ingest.index import share_write_lock
    from pgsam_node.ingest.journal import acceptor_journal_dir
    from pgsam_node.ingest.listener import Listener

    gate = RemoteGate(ctrl, rest)
    db = Database(settings.database_url, echo=settings.database.echo, migrate=False)
    if db.is_sqlite:
        share_write_lock(settings)
    sock = socket.socket(fileno=args.listen_fd)
    sock.setblocking(False)
    listener = Listener(settings, db, on_release=lambda studies: gate.call("released", studies=sorted(studies)),
                        sock=sock, shared=True, gate=gate, journal_dir=acceptor_journal_dir(settings, args.index))
    listener.start()
    gate.call("ready")
    wlog.info("acceptor worker %d (pid %d) accepting", args.index, os.getpid())

    def report() -> None:
        last = None
        while not stop.is_set():
            stop.wait(1.0)
            now = dict(listener.counters)
            if now != last:
                try:
                    gate.call("counters", **now)
                except OSError:
                    return
                last = now

    threading.Thread(target=report, name="acceptor-counters", daemon=True).start()
    parent_gone = False
    while not stop.is_set():
        try:
            ready = selectors.DefaultSelector()
            ready.register(args.lifeline_fd, selectors.EVENT_READ)
            events = ready.select(timeout=0.5)
            ready.close()
            if not events:
                continue
            data = os.read(args.lifeline_fd, 16)
        except InterruptedError:
            continue
        if not data:
            parent_gone = True
        stop.set()
    if parent_gone:
        # The serve process died (PR_SET_PDEATHSIG normally got here first): leave as a crash would.
        os._exit(1)
    listener.stop()
    try:
        gate.call("counters", **listener.counters)
    except OSError:
        pass
    db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
