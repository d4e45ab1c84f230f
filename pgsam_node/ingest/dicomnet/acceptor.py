"""A DICOM association acceptor (PS3.8): TCP (or TLS) connections, association negotiation, and
DIMSE message assembly for the services a clinical node offers: Verification (C-ECHO), Storage
(C-STORE) and Storage Commitment reports (N-EVENT-REPORT).

Why not pynetdicom here: its general state machine and message objects cost about 3.5 ms of CPU
per instance, which capped the node at a tenth of DCMTK's storescp. This acceptor is the narrow
path a storage SCP needs: one thread per association, PDUs read into memory once, and the data
set of a C-STORE handed to the service fragment by fragment as memoryviews (no copies, no
decoding) so it can be written straight to disk. pynetdicom is still used for everything the node
sends (SCU side) and in the tests as a client.

The service (:class:`Service`) decides policy (who may associate) and does the work; the acceptor
only speaks the protocol: a malformed or unexpected PDU aborts that association (A-ABORT, PS3.8
9.3.8) and nothing else.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from pgsam_node.ingest.dicomnet import dimse
from pgsam_node.ingest.dicomnet.pdu import (
    A_ABORT,
    A_ASSOCIATE_RQ,
    A_RELEASE_RQ,
    APPLICATION_CONTEXT,
    P_DATA_TF,
    PC_ABSTRACT_SYNTAX_NOT_SUPPORTED,
    PC_ACCEPTANCE,
    PC_TRANSFER_SYNTAXES_NOT_SUPPORTED,
    AssociateRQ,
    PDUError,
    PresentationContextAC,
    RoleSelection,
    decode_associate_rq,
    safe_ae,
    encode_abort,
    encode_associate_ac,
    encode_associate_rj,
    encode_p_data,
    encode_release_rp,
    iter_pdvs,
)

log = logging.getLogger(__name__)

#: Largest P-DATA-TF PDU we ask peers to send (PS3.8 D.1 Maximum Length Receive). Large PDUs mean
#: fewer reads per instance; the bound keeps one association's buffer small.
DEFAULT_MAX_PDU = 1 << 20
#: How long to wait for the peer to close after an A-ASSOCIATE-RJ or A-RELEASE-RP (PS3.8 ARTIM).
_ARTIM_CLOSE = 2.0


class ConnectionClosed(Exception):
    """The peer closed the transport."""


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ to send (PS3.8 9.3.4) and why, for the log."""

    result: int
    source: int
    reason: int
    why: str


@dataclass
class Association:
    """One accepted association, as the service sees it."""

    peer_host: str
    peer_port: int
    calling_ae: str = ""
    called_ae: str = ""
    #: Accepted presentation contexts: id -> (abstract syntax, transfer syntax).
    contexts: dict[int, tuple[str, str]] = field(default_factory=dict)
    peer_max_pdu: int = 0
    is_established: bool = False
    #: Free for the service (e.g. the studies stored on this association).
    data: dict = field(default_factory=dict)


class StoreSink(Protocol):
    """Receives one C-STORE data set as it arrives."""

    def write(self, fragment: memoryview) -> None:
        """Take the next fragment (valid only during the call)."""

    def finish(self) -> tuple[int, str | None]:
        """The data set is complete: return (status, error comment)."""

    def discard(self) -> None:
        """The association ended before the data set was complete."""


class Service(Protocol):
    """What the acceptor calls; implemented by the node's listener."""

    def check_association(self, rq: AssociateRQ, assoc: Association) -> Rejection | None: ...

    def echo(self, assoc: Association) -> int: ...

    def begin_store(self, assoc: Association, transfer_syntax: str, command: dict) -> StoreSink: ...

    def event_report(self, assoc: Association, transfer_syntax: str, command: dict, dataset: bytes) -> int: ...

    def association_ended(self, assoc: Association, released: bool) -> None: ...


#: Largest data set kept in memory for a message that is not a C-STORE (an N-EVENT-REPORT's
#: event information is a few KB); a larger one is read and dropped.
_MAX_COLLECT = 16 << 20


class _Collect:
    """Sink for data sets that are not stored (N-EVENT-REPORT information, unknown commands)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.overflow = False

    def write(self, fragment: memoryview) -> None:
        self.size += len(fragment)
        if self.size > _MAX_COLLECT:
            self.overflow = True
            self.parts.clear()
        else:
            self.parts.append(bytes(fragment))

    def discard(self) -> None:
        self.parts.clear()


@dataclass(frozen=True)
class Limits:
    """The acceptor's limits at the network edge (each a ``dicom.*`` config key, docs/ingest.md).

    Attributes
    ----------
    max_associations, max_associations_per_host
        Established associations at once, in total and per peer host.
    max_pending, max_pending_per_host
        Connections not yet associated (accepted, A-ASSOCIATE-RQ not yet answered); more are closed
        at once, before a thread or a buffer exists for them.
    associate_rq_deadline
        Seconds from accept (TLS handshake included) to a complete A-ASSOCIATE-RQ.
    max_associate_rq
        Largest A-ASSOCIATE-RQ PDU, in bytes.
    max_command
        Largest DIMSE command set, in bytes (PS3.7 E.1); past it the association is aborted.
    pdu_deadline
        Seconds from a PDU's header to its last byte.
    message_deadline
        Seconds from a message's first command fragment to its last fragment.
    """

    max_associations: int = 8
    max_associations_per_host: int = 8
    max_pending: int = 32
    max_pending_per_host: int = 4
    associate_rq_deadline: float = 10.0
    max_associate_rq: int = 256 * 1024
    max_command: int = 16 * 1024
    pdu_deadline: float = 60.0
    message_deadline: float = 900.0


class Gate(Protocol):
    """Counts connections and associations against :class:`Limits` for several acceptor processes
    (``dicom.acceptor_processes`` > 1): the counts live in one place, so the limits stay node-wide.
    Each method returns why the limit refuses, or None when counted."""

    def pend(self, host: str) -> str | None: ...

    def unpend(self, host: str) -> None: ...

    def admit(self, host: str) -> str | None:
        """Pending -> established; a refused connection stays pending until :meth:`unpend`."""

    def leave(self, host: str) -> None: ...


class _Tracked:
    """One transport connection as the acceptor's watchdog sees it."""

    __slots__ = ("sock", "assoc", "host", "deadline", "why", "expired", "pending")

    def __init__(self, sock, assoc: Association, host: str, deadline: float | None, why: str):
        self.sock = sock
        self.assoc = assoc
        self.host = host
        #: time.monotonic() after which the watchdog ends the connection (None: no deadline).
        self.deadline = deadline
        self.why = why
        #: Set by the watchdog: why the connection was ended.
        self.expired: str | None = None
        self.pending = True


#: Bytes read per recv before association; the buffer grows only as bytes arrive.
_PRE_CHUNK = 4096
#: Initial size of an association's PDU buffer; it grows (doubling) only as PDU bytes arrive.
_INITIAL_BUF = 64 * 1024
#: How often the watchdog looks at deadlines (seconds).
_WATCH_PERIOD = 0.2


class Acceptor:
    """Listen on ``(bind, port)`` and serve each association on its own thread.

    Parameters
    ----------
    service
        The policy and work behind the protocol.
    supported
        Abstract syntax -> transfer syntaxes we accept for it.
    role_syntaxes
        Abstract syntaxes for which a proposed SCP/SCU role selection is accepted as proposed
        (Storage Commitment: the PACS reports as SCP, PS3.4 J.3.3).
    max_associations
        More concurrent associations are rejected (transient, local limit exceeded).
    timeout
        Seconds of network silence before an association is aborted.
    ssl_context
        Server-side TLS context, or None for plain TCP.
    limits
        Pre-association, size and deadline limits (:class:`Limits`); ``max_associations`` wins
        over ``limits.max_associations``.
    sock
        A listening socket bound earlier (``pgsam-node serve`` binds the port before it loads the
        rest of the node, so that connections wait in the kernel's queue rather than being
        refused), or one shared with other acceptor processes (``shared``); None: bind
        ``(bind, port)`` here.
    shared
        ``sock`` is shared with other processes: it is used non-blocking (every process polls it;
        one wins each connection) and never shut down by this acceptor, only closed.
    gate
        Where the limits are counted when several processes accept (:class:`Gate`); None: here.
    """

    def __init__(self, service: Service, bind: str, port: int, supported: dict[str, frozenset[str]],
                 role_syntaxes: frozenset[str] = frozenset(), max_associations: int = 8, timeout: float = 60.0,
                 ssl_context: ssl.SSLContext | None = None, max_pdu: int = DEFAULT_MAX_PDU,
                 implementation_class_uid: str = "", implementation_version_name: str = "",
                 limits: Limits | None = None, sock: socket.socket | None = None, shared: bool = False,
                 gate: Gate | None = None):
        self.service = service
        self.supported = supported
        self.role_syntaxes = role_syntaxes
        self.limits = limits or Limits(max_associations=max_associations,
                                       max_associations_per_host=max_associations)
        self.max_associations = max_associations
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.max_pdu = max_pdu
        self.implementation_class_uid = implementation_class_uid
        self.implementation_version_name = implementation_version_name
        self._shared = shared and sock is not None
        self._sock = sock if sock is not None else socket.create_server((bind, port), backlog=128)
        self.gate = gate
        # A shared socket: wake the accept loop through a pipe, never by shutting the socket down
        # (that would stop it for every process sharing it).
        self._wake_r, self._wake_w = os.pipe() if self._shared else (-1, -1)
        self._lock = threading.Lock()
        self._conns: dict[int, _Tracked] = {}
        self._active = 0
        self._active_by_host: dict[str, int] = {}
        self._pending = 0
        self._pending_by_host: dict[str, int] = {}
        #: Connections closed at accept because of the pre-association limits (for tests/metrics).
        self.refused_connections = 0
        self._last_refusal_log = 0.0
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None

    @property
    def server_address(self) -> tuple[str, int]:
        return self._sock.getsockname()[:2]

    @property
    def active_associations(self) -> list[Association]:
        """Associations currently open (negotiating or established)."""
        with self._lock:
            return [t.assoc for t in self._conns.values()]

    @property
    def pending_connections(self) -> int:
        """Connections accepted and not yet associated."""
        with self._lock:
            return self._pending

    def start(self) -> None:
        self._thread = threading.Thread(target=self._accept_loop, name="dicom-accept", daemon=True)
        self._thread.start()
        self._watchdog = threading.Thread(target=self._watch, name="dicom-deadlines", daemon=True)
        self._watchdog.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, end open associations (transport closed), release the port."""
        self._stopping.set()
        if self._shared:
            os.write(self._wake_w, b"x")
        else:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            conns = list(self._conns.values())
            threads = list(self._threads)
        for t in conns:
            try:
                socket.socket.shutdown(t.sock, socket.SHUT_RDWR)
            except OSError:
                pass
        # Each association sees its transport close and ends (an instance being written finishes
        # or is discarded, never acknowledged half-way); wait for them so that nothing runs
        # against storage or database after stop() returns.
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if self._watchdog is not None:
            self._watchdog.join(1.0)
        if self._shared:
            os.close(self._wake_r)
            os.close(self._wake_w)

    # ---- deadlines -----------------------------------------------------------------------------
    def _watch(self) -> None:
        """End connections past their deadline (PS3.8 ARTIM for the A-ASSOCIATE-RQ; the node's
        PDU and message deadlines after it). Shutting the read side wakes the connection's thread
        with end-of-file; it can still send its A-ABORT."""
        while not self._stopping.wait(_WATCH_PERIOD):
            now = time.monotonic()
            with self._lock:
                late = [t for t in self._conns.values()
                        if t.deadline is not None and now > t.deadline and t.expired is None]
                for t in late:
                    t.expired = t.why
            for t in late:
                try:
                    # The plain socket's shutdown: SSLSocket.shutdown would drop the TLS state.
                    socket.socket.shutdown(t.sock, socket.SHUT_RD)
                except OSError:
                    pass

    # ---- connections -------------------------------------------------------------------------
    def _refuse_connection(self, sock: socket.socket, host: str, why: str) -> None:
        self.refused_connections += 1
        now = time.monotonic()
        if now - self._last_refusal_log > 5.0:  # a flood must not flood the log too
            self._last_refusal_log = now
            log.warning("connection from %s closed before association: %s (%d refused so far)", host, why,
                        self.refused_connections)
        try:
            sock.close()
        except OSError:
            pass

    def _accept_shared(self):
        """Accept on a socket shared with other processes: wait until it is readable (or the
        wake pipe), then try; another process may have taken the connection (EAGAIN)."""
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                sel.select()
                if self._stopping.is_set():
                    return
                try:
                    return self._sock.accept()
                except (BlockingIOError, InterruptedError):
                    continue
        finally:
            sel.close()
        return None

    def _accept_loop(self) -> None:
        lim = self.limits
        while not self._stopping.is_set():
            try:
                if self._shared:
                    got = self._accept_shared()
                    if got is None:
                        return
                    sock, addr = got
                    sock.setblocking(True)
                else:
                    sock, addr = self._sock.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                if self._shared:
                    time.sleep(0.05)  # e.g. EMFILE: do not spin on a readable socket
                continue
            host = addr[0]
            if self.gate is not None:
                try:
                    why = self.gate.pend(host)
                except OSError:
                    why = "acceptor processes' shared limits unavailable (serve is stopping)"
                if why is not None:
                    self._refuse_connection(sock, host, why)
                    continue
                self._spawn(sock, addr)
                continue
            with self._lock:
                if self._pending >= lim.max_pending:
                    why = f"{self._pending} connections already waiting to associate (dicom.max_pending_connections)"
                elif self._pending_by_host.get(host, 0) >= lim.max_pending_per_host:
                    why = "too many connections from this host waiting to associate (dicom.max_pending_per_host)"
                else:
                    why = None
                    self._pending += 1
                    self._pending_by_host[host] = self._pending_by_host.get(host, 0) + 1
            if why is not None:
                self._refuse_connection(sock, host, why)
                continue
            self._spawn(sock, addr)

    def _spawn(self, sock: socket.socket, addr) -> None:
        t = threading.Thread(target=self._serve, args=(sock, addr), name=f"dicom-assoc-{addr[1]}", daemon=True)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
        t.start()

    def _unpend(self, tracked: _Tracked) -> None:
        """The connection is no longer waiting to associate (call with the lock held)."""
        if tracked.pending and self.gate is not None:
            tracked.pending = False
            self._gate_call(self.gate.unpend, tracked.host)
        elif tracked.pending:
            tracked.pending = False
            self._pending -= 1
            n = self._pending_by_host.get(tracked.host, 1) - 1
            if n > 0:
                self._pending_by_host[tracked.host] = n
            else:
                self._pending_by_host.pop(tracked.host, None)

    def _serve(self, sock: socket.socket, addr) -> None:
        assoc = Association(peer_host=addr[0], peer_port=addr[1])
        key = id(assoc)
        tracked = _Tracked(sock, assoc, addr[0], time.monotonic() + self.limits.associate_rq_deadline,
                           f"no complete A-ASSOCIATE-RQ within {self.limits.associate_rq_deadline:g} s")
        with self._lock:
            self._conns[key] = tracked
        try:
            # Small response PDUs must not wait for Nagle's algorithm (a delayed ACK costs ~40 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(min(self.timeout, self.limits.associate_rq_deadline))
            if self.ssl_context is not None:
                try:
                    sock = self.ssl_context.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    log.warning("TLS handshake with %s failed: %s", addr[0], tracked.expired or exc)
                    return
                with self._lock:
                    tracked.sock = sock
            _Connection(self, sock, assoc, tracked).run()
        except Exception:  # noqa: BLE001 - one association's failure must not stop the listener
            log.exception("association from %s ended with an internal error", addr[0])
        finally:
            with self._lock:
                self._conns.pop(key, None)
                if self.gate is None:
                    self._unpend(tracked)
            if self.gate is not None:
                self._unpend(tracked)
            try:
                sock.close()
            except OSError:
                pass

    def _gate_call(self, method, host: str) -> None:
        try:
            method(host)
        except OSError as exc:  # the serve process is gone or stopping: nothing left to count
            log.debug("shared limits unavailable: %s", exc)

    def _admit(self, tracked: _Tracked) -> str | None:
        """Count the connection as an association; the limit it would exceed, else None."""
        lim = self.limits
        if self.gate is not None:
            try:
                why = self.gate.admit(tracked.host)
            except OSError:
                return "acceptor processes' shared limits unavailable (serve is stopping)"
            if why is None:
                tracked.pending = False
                tracked.deadline = None
            return why
        with self._lock:
            if self._active >= self.max_associations:
                return f"{self.max_associations} associations already open"
            if self._active_by_host.get(tracked.host, 0) >= lim.max_associations_per_host:
                return f"{lim.max_associations_per_host} associations already open from this host"
            self._active += 1
            self._active_by_host[tracked.host] = self._active_by_host.get(tracked.host, 0) + 1
            self._unpend(tracked)
            tracked.deadline = None
            return None

    def _leave(self, tracked: _Tracked) -> None:
        if self.gate is not None:
            self._gate_call(self.gate.leave, tracked.host)
            return
        with self._lock:
            self._active -= 1
            n = self._active_by_host.get(tracked.host, 1) - 1
            if n > 0:
                self._active_by_host[tracked.host] = n
            else:
                self._active_by_host.pop(tracked.host, None)


class _Connection:
    """The protocol on one transport connection: negotiate, then exchange DIMSE messages."""

    def __init__(self, acceptor: Acceptor, sock: socket.socket, assoc: Association, tracked: _Tracked):
        self.a = acceptor
        self.sock = sock
        self.assoc = assoc
        self.tracked = tracked
        # Created at association: before it a connection holds no buffer beyond what it has sent.
        self.rfile = None
        self.buf = bytearray()
        # Message being assembled (PS3.8 9.3.5: a message may span PDVs and PDUs).
        self.cmd_parts: list[bytes] = []
        self.cmd_size = 0
        self.command: dict | None = None
        self.command_ctx = 0
        self.sink = None
        #: time.monotonic() by which the message being received must be complete (None: none).
        self.message_deadline: float | None = None

    def _read_first_pdu(self, limit: int) -> tuple[int, bytes]:
        """The A-ASSOCIATE-RQ (or whatever comes first), read with plain recv calls into a buffer
        that grows only as bytes arrive: a declared length costs nothing until it is sent. The
        watchdog ends the connection at the A-ASSOCIATE-RQ deadline (ARTIM, PS3.8 9.1.5)."""
        buf = bytearray()
        need = 6
        length = None
        while len(buf) < need:
            chunk = self.sock.recv(min(_PRE_CHUNK, need - len(buf)))
            if not chunk:
                raise ConnectionClosed
            buf += chunk
            if length is None and len(buf) >= 6:
                pdu_type, _, length = struct.unpack_from(">BBI", buf)
                if length > limit:
                    raise PDUError(f"first PDU declares {length} bytes, more than the {limit} accepted")
                need = 6 + length
        return buf[0], bytes(buf[6:])

    def _read_exact(self, view: memoryview) -> None:
        got, length = 0, len(view)
        while got < length:
            n = self.rfile.readinto(view[got:])
            if not n:
                raise ConnectionClosed
            got += n

    def _read_pdu(self, limit: int) -> tuple[int, memoryview]:
        """The next PDU's type and body. The body is a view into this connection's one reusable
        buffer (no allocation per PDU), valid until the next call. The buffer grows (doubling) only
        when bytes arrive to fill it, never to a declared length ahead of them."""
        head = self.rfile.read(6)
        if len(head) < 6:
            raise ConnectionClosed
        pdu_type, _, length = struct.unpack(">BBI", head)
        if length > limit:
            raise PDUError(f"PDU of {length} bytes exceeds the {limit} negotiated")
        # A PDU must arrive within its deadline, not merely with gaps shorter than the idle timeout.
        lim = self.a.limits
        deadline = time.monotonic() + lim.pdu_deadline
        t = self.tracked
        t.why = f"PDU not complete within {lim.pdu_deadline:g} s"
        if self.message_deadline is not None and self.message_deadline < deadline:
            deadline = self.message_deadline
            t.why = f"DIMSE message not complete within {lim.message_deadline:g} s"
        t.deadline = deadline
        buf = self.buf
        got = 0
        while len(buf) < length:
            # Fill what exists, then double: the bytes already read are the licence to grow.
            self._read_exact(memoryview(buf)[got:])
            got = len(buf)
            bigger = bytearray(min(length, max(2 * len(buf), _INITIAL_BUF)))
            bigger[:got] = buf
            self.buf = buf = bigger
        view = memoryview(buf)[:length]
        self._read_exact(view[got:])
        t.deadline = self.message_deadline
        if self.message_deadline is not None:
            t.why = f"DIMSE message not complete within {lim.message_deadline:g} s"
        return pdu_type, view

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _linger_close(self) -> None:
        """After RJ/RP the requestor closes the transport; wait briefly for that (PS3.8 ARTIM)."""
        try:
            self.sock.settimeout(_ARTIM_CLOSE)
            while self.sock.recv(4096):
                pass
        except (OSError, ValueError):
            pass

    def run(self) -> None:
        try:
            pdu_type, body = self._read_first_pdu(self.a.limits.max_associate_rq)
        except PDUError as exc:
            self._abort(str(exc))
            return
        except (ConnectionClosed, OSError):
            if self.tracked.expired:
                self._abort(self.tracked.expired)
            return  # no association was requested: nothing to answer
        if pdu_type != A_ASSOCIATE_RQ:
            self._abort(f"first PDU was type 0x{pdu_type:02X}, not A-ASSOCIATE-RQ")
            return
        try:
            rq = decode_associate_rq(body)
        except PDUError as exc:
            self._abort(f"malformed A-ASSOCIATE-RQ: {exc}")
            return
        self.assoc.calling_ae, self.assoc.called_ae = rq.calling_ae, rq.called_ae
        self.assoc.peer_max_pdu = rq.max_pdu_length
        rejection = self._policy(rq)
        if rejection is not None:
            self.tracked.deadline = None
            self._send(encode_associate_rj(rejection.result, rejection.source, rejection.reason))
            self._linger_close()
            return
        released = False
        try:
            self.sock.settimeout(self.a.timeout)
            self.rfile = self.sock.makefile("rb", buffering=256 * 1024)
            self.buf = bytearray(_INITIAL_BUF)
            self._accept(rq)
            released = self._exchange()
        finally:
            if self.sink is not None:
                self.sink.discard()
                self.sink = None
            self.a._leave(self.tracked)
            self.assoc.is_established = False
            self.a.service.association_ended(self.assoc, released)

    def _policy(self, rq: AssociateRQ) -> Rejection | None:
        if not rq.protocol_version & 1:
            return Rejection(1, 2, 2, "protocol version not supported")
        if rq.application_context != APPLICATION_CONTEXT:
            return Rejection(1, 1, 2, "application context name not supported")
        rejection = self.a.service.check_association(rq, self.assoc)
        if rejection is not None:
            return rejection
        full = self.a._admit(self.tracked)
        if full is not None:
            log.warning("association from %s@%s rejected: %s", safe_ae(rq.calling_ae), self.assoc.peer_host, full)
            return Rejection(2, 3, 2, "local limit exceeded")
        return None

    def _accept(self, rq: AssociateRQ) -> None:
        answers, roles = [], []
        for pc in rq.contexts:
            wanted = self.a.supported.get(pc.abstract_syntax)
            first = pc.transfer_syntaxes[0] if pc.transfer_syntaxes else ""
            if wanted is None:
                answers.append(PresentationContextAC(pc.context_id, PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, first))
                continue
            # The first syntax the *peer* lists that we support (PS3.8 leaves the choice to the
            # acceptor): compressed data stays compressed byte for byte, uncompressed data is
            # never pushed into lossy compression.
            ts = next((t for t in pc.transfer_syntaxes if t in wanted), None)
            if ts is None:
                answers.append(PresentationContextAC(pc.context_id, PC_TRANSFER_SYNTAXES_NOT_SUPPORTED, first))
                continue
            answers.append(PresentationContextAC(pc.context_id, PC_ACCEPTANCE, ts))
            self.assoc.contexts[pc.context_id] = (pc.abstract_syntax, ts)
            role = rq.roles.get(pc.abstract_syntax)
            if role is not None and pc.abstract_syntax in self.a.role_syntaxes:
                roles.append(RoleSelection(pc.abstract_syntax, role.scu_role, role.scp_role))
        self._send(encode_associate_ac(rq, answers, self.a.max_pdu, self.a.implementation_class_uid,
                                       self.a.implementation_version_name, roles))
        self.assoc.is_established = True

    def _abort(self, why: str) -> None:
        log.warning("association from %s aborted: %s", self.assoc.peer_host, why)
        self.tracked.deadline = None
        try:
            self._send(encode_abort(2, 2))
        except OSError:
            pass

    def _exchange(self) -> bool:
        """Serve DIMSE messages until release (True) or abort/close (False)."""
        limit = max(self.a.max_pdu, 1 << 16) * 2
        while True:
            try:
                pdu_type, body = self._read_pdu(limit)
            except ConnectionClosed:
                if self.tracked.expired:
                    self._abort(self.tracked.expired)
                else:
                    log.warning("association from %s: connection closed without release", self.assoc.peer_host)
                return False
            except TimeoutError:
                self._abort(f"no data for {self.a.timeout:g} s")
                return False
            except PDUError as exc:
                self._abort(str(exc))
                return False
            except OSError as exc:
                log.warning("association from %s: connection lost: %s", self.assoc.peer_host, exc)
                return False
            if pdu_type == P_DATA_TF:
                try:
                    self._p_data(body)
                except PDUError as exc:
                    self._abort(str(exc))
                    return False
            elif pdu_type == A_RELEASE_RQ:
                self._send(encode_release_rp())
                self._linger_close()
                return True
            elif pdu_type == A_ABORT:
                log.warning("association from %s aborted by the peer", self.assoc.peer_host)
                return False
            else:
                self._abort(f"unexpected PDU type 0x{pdu_type:02X}")
                return False

    def _p_data(self, body: memoryview) -> None:
        for ctx_id, control, data in iter_pdvs(body):
            if ctx_id not in self.assoc.contexts:
                raise PDUError(f"PDV on presentation context {ctx_id}, which was not accepted")
            if control & 0x01:  # command fragment
                if self.command is not None:
                    raise PDUError("a new command arrived before the previous data set ended")
                self.cmd_size += len(data)
                if self.cmd_size > self.a.limits.max_command:
                    # PS3.7 E.1: a command set is a few group-0000 elements; unbounded fragments
                    # without the last bit would otherwise grow memory without limit.
                    raise PDUError(f"command set larger than {self.a.limits.max_command} bytes")
                if self.message_deadline is None:
                    self.message_deadline = time.monotonic() + self.a.limits.message_deadline
                self.cmd_parts.append(bytes(data))
                if control & 0x02:
                    command = dimse.decode_command(b"".join(self.cmd_parts))
                    self.cmd_parts = []
                    self.cmd_size = 0
                    self._begin(ctx_id, command)
            else:
                if self.command is None or ctx_id != self.command_ctx:
                    raise PDUError("data set fragment without its command")
                self.sink.write(data)
                if control & 0x02:
                    self._complete()

    def _begin(self, ctx_id: int, command: dict) -> None:
        self.command, self.command_ctx = command, ctx_id
        if command.get(dimse.COMMAND_DATA_SET_TYPE, dimse.NO_DATA_SET) == dimse.NO_DATA_SET:
            self.sink = None
            self._complete()
            return
        ts = self.assoc.contexts[ctx_id][1]
        if command[dimse.COMMAND_FIELD] == dimse.C_STORE_RQ:
            self.sink = self.a.service.begin_store(self.assoc, ts, command)
        else:
            self.sink = _Collect()

    def _complete(self) -> None:
        command, ctx_id, sink = self.command, self.command_ctx, self.sink
        self.command, self.sink = None, None
        self.message_deadline = self.tracked.deadline = None
        field_ = command[dimse.COMMAND_FIELD]
        ts = self.assoc.contexts[ctx_id][1]
        comment = None
        if field_ == dimse.C_STORE_RQ and sink is not None:
            status, comment = sink.finish()
            rsp = dimse.C_STORE_RSP
        elif field_ == dimse.C_STORE_RQ:
            status, comment, rsp = 0xC210, "C-STORE without a data set", dimse.C_STORE_RSP
        elif field_ == dimse.C_ECHO_RQ:
            status, rsp = self.a.service.echo(self.assoc), dimse.C_ECHO_RSP
        elif field_ == dimse.N_EVENT_REPORT_RQ and sink is not None and sink.overflow:
            status, comment, rsp = 0x0110, "event information too large", dimse.N_EVENT_REPORT_RSP
        elif field_ == dimse.N_EVENT_REPORT_RQ:
            data = b"".join(sink.parts) if sink is not None else b""
            status, rsp = self.a.service.event_report(self.assoc, ts, command, data), dimse.N_EVENT_REPORT_RSP
        else:
            # PS3.7 C.4.2 / 0x0211: unrecognised operation (e.g. C-FIND on a storage context).
            status, comment, rsp = 0x0211, "operation not supported by this node", field_ | 0x8000
        payload = dimse.response(command, rsp, status, comment)
        self._send(b"".join(encode_p_data(ctx_id, True, payload, self.assoc.peer_max_pdu)))
