"""HL7 v2 report intake: ORU^R01 over MLLP into the embedded ``reports`` table.

Framing (MLLP, HL7 v2 Implementation Guide, "Minimal Lower Layer Protocol" release 2):
``<VT 0x0B> message <FS 0x1C><CR 0x0D>``; a message may arrive in several TCP packets and a
connection may carry several messages, each answered by one ACK in order.

Each OBR and the OBX segments after it (an ORDER_OBSERVATION group) is one report.

Field mapping (defaults; docs/reports.md):

======================  =============================================================
PID-3 (CX.1, 1st rep.)   patient ID
OBR-2 / OBR-3 (EI.1)     placer / filler order number (report identity when no accession)
``hl7.accession_fields`` accession number, first non-empty of [OBR-18, OBR-3] by default
OBR-25                   result status (F final, P preliminary, C corrected); else OBX-11
OBR-22 / OBR-7 / MSH-7   report time (first present)
OBR-7 (date part)        study date
OBX (type FT, TX, ST)    report text: OBX-5 repetitions and OBX segments joined by newlines,
                         HL7 escapes decoded (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\.br\\ \\Xhh\\)
OBX-3 = 113014^…^DCM     StudyInstanceUID (DICOM "Study Instance UID" code), or ZDS-1
======================  =============================================================

Acknowledgements (original mode, HL7 v2.5 2.9.2): MSA-1 ``AA`` once the report is committed
(persist before acknowledge); ``AR`` (reject: do not resend as is) for a message type other than
ORU^R01 or an oversized frame; ``AE`` (error) for malformed messages, missing required fields and
storage failures. MSA-3 and ERR-8 carry the reason; ERR-3 the HL7 table 0357 code.
Report text and patient identifiers never reach a log line.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import re
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pgsam_node.config import Settings
from pgsam_node.db.session import Database
from pgsam_node.errors import Hl7Error, ReportError
from pgsam_node.logsetup import uid_hash
from pgsam_node.tls import server_context
from pgsam_node.reports.store import IncomingReport, StoreResult, store_report
from pgsam_node.reports.ris import parse_date, parse_datetime

log = logging.getLogger(__name__)

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"

#: MSH-18 character sets we decode (HL7 table 0211).
_CHARSETS = {
    "": "utf-8",
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/5": "iso8859-5",
    "8859/7": "iso8859-7",
    "8859/15": "iso8859-15",
    "GB 18030-2000": "gb18030",
    "GB18030": "gb18030",
    "KS X 1001": "euc-kr",
    "ISO IR87": "iso2022_jp",
    "BIG-5": "big5",
}
_TEXT_TYPES = {"FT", "TX", "ST", "CF", ""}
STUDY_UID_CODE = "113014"


class Hl7Reject(Hl7Error):
    """A message we answer with a NAK; ``code`` is MSA-1 (AE/AR), ``err`` HL7 table 0357."""

    def __init__(self, message: str, code: str = "AE", err: str = "207^Application internal error", location: str = ""):
        super().__init__(message)
        self.code = code
        self.err = err
        self.location = location


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
@dataclass
class Encoding:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"


class Message:
    """A parsed HL7 v2 message: segments as lists of raw (still escaped) fields."""

    def __init__(self, text: str):
        text = text.strip("\r\n\x0b\x1c")
        segs = [s for s in re.split(r"\r\n|\r|\n", text) if s.strip()]
        if not segs or not segs[0].startswith("MSH") or len(segs[0]) < 8:
            raise Hl7Reject("message does not start with an MSH segment", "AE", "100^Segment sequence error", "MSH")
        msh = segs[0]
        fs = msh[3]
        enc = msh[4:8]
        if fs.isalnum() or len(set(enc + fs)) < 5:
            raise Hl7Reject("invalid MSH-1/MSH-2 encoding characters", "AE", "102^Data type error", "MSH-2")
        self.enc = Encoding(fs, enc[0], enc[1], enc[2], enc[3])
        self.segments: list[tuple[str, list[str]]] = []
        for seg in segs:
            parts = seg.split(fs)
            name = parts[0]
            if not re.fullmatch(r"[A-Z][A-Z0-9]{2}", name):
                # Never echo the bytes: a broken segment separator puts patient data here.
                raise Hl7Reject("invalid segment name", "AE", "100^Segment sequence error")
            if name == "MSH":
                # MSH-1 is the field separator itself: shift so that fields[n] is MSH-n.
                fields = ["MSH", fs] + parts[1:]
            else:
                fields = parts
            self.segments.append((name, fields))

    def all(self, name: str) -> list[list[str]]:
        return [f for n, f in self.segments if n == name]

    def first(self, name: str) -> list[str] | None:
        seg = self.all(name)
        return seg[0] if seg else None

    def field(self, seg: list[str] | None, n: int) -> str:
        if seg is None or n >= len(seg):
            return ""
        return seg[n]

    def component(self, value: str, n: int = 1, rep: int = 0) -> str:
        """Component ``n`` (1-based) of repetition ``rep``, unescaped."""
        reps = value.split(self.enc.repetition) if value else [""]
        if rep >= len(reps):
            return ""
        comps = reps[rep].split(self.enc.component)
        if n > len(comps):
            return ""
        return self.unescape(comps[n - 1].split(self.enc.subcomponent)[0]).strip()

    def get(self, path: str) -> str:
        """``"OBR-18"`` → first component of that field of the first such segment, unescaped."""
        name, _, num = path.partition("-")
        return self.component(self.field(self.first(name), int(num)))

    def unescape(self, s: str) -> str:
        """Decode HL7 escape sequences (HL7 v2.5 2.7.4): \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\.br\\ \\Xhh\\."""
        e = self.enc.escape
        if e not in s:
            return s
        out: list[str] = []
        i = 0
        while i < len(s):
            c = s[i]
            if c != e:
                out.append(c)
                i += 1
                continue
            j = s.find(e, i + 1)
            if j < 0:
                out.append(s[i:])
                break
            seq = s[i + 1 : j]
            i = j + 1
            up = seq.upper()
            if up == "F":
                out.append(self.enc.field)
            elif up == "S":
                out.append(self.enc.component)
            elif up == "T":
                out.append(self.enc.subcomponent)
            elif up == "R":
                out.append(self.enc.repetition)
            elif up == "E":
                out.append(e)
            elif up in (".BR", ".SP"):
                out.append("\n")
            elif up.startswith("X") and re.fullmatch(r"X([0-9A-F]{2})+", up):
                raw = bytes.fromhex(seq[1:])
                try:
                    out.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    out.append(raw.decode("latin-1"))
            elif up in ("H", "N") or up.startswith((".IN", ".TI", ".CE", ".SK", ".FI", ".NF", "C", "M", "Z")):
                continue  # highlighting / formatting / charset switch: no text of its own
            else:
                out.append(e + seq + e)
        return "".join(out)

    def text_lines(self, value: str) -> list[str]:
        """All repetitions of a text field (OBX-5 of FT/TX), unescaped."""
        return [self.unescape(r) for r in value.split(self.enc.repetition)]


def decode_bytes(data: bytes) -> str:
    """Decode a message using its MSH-18 character set (UTF-8 when absent)."""
    head = data[:1024].decode("latin-1")
    charset = ""
    first = re.split(r"[\r\n]", head, maxsplit=1)[0]
    if first.startswith("MSH") and len(first) > 3:
        parts = first.split(first[3])
        # parts[k] is MSH-(k+1); MSH-18 is parts[17].
        if len(parts) > 17:
            charset = parts[17].split(first[4:5] or "^")[0].strip().upper()
    codec = _CHARSETS.get(charset)
    if codec is None:
        raise Hl7Reject(f"unsupported character set MSH-18 {charset!r}", "AE", "102^Data type error", "MSH-18")
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        if charset == "":
            return data.decode("latin-1")
        raise Hl7Reject(f"message is not valid {charset}", "AE", "102^Data type error", "MSH-18") from None


@dataclass
class OruReport:
    """What an ORU^R01 says: one report per OBR (order) group, ready for :func:`store_report`."""

    reports: list[IncomingReport]
    control_id: str

    @property
    def incoming(self) -> IncomingReport:
        """The first (usually the only) report."""
        return self.reports[0]


def parse_oru(msg: Message, accession_fields: list[str], max_groups: int | None = None) -> OruReport:
    """Read one ORU^R01: each OBR with the OBX segments after it is one report.

    Raises
    ------
    Hl7Reject
        AR for another message type; AE for missing required fields (the whole message is
        refused: nothing of it is stored).
    """
    msh = msg.first("MSH")
    mtype = msg.field(msh, 9)
    typ, trig = msg.component(mtype, 1), msg.component(mtype, 2)
    control = msg.component(msg.field(msh, 10))
    if not typ:
        raise Hl7Reject("MSH-9 message type is missing", "AE", "101^Required field missing", "MSH-9")
    if (typ, trig) != ("ORU", "R01"):
        raise Hl7Reject("unsupported message type: only ORU^R01 is accepted", "AR", "200^Unsupported message type", "MSH-9")
    if not control:
        raise Hl7Reject("MSH-10 message control ID is missing", "AE", "101^Required field missing", "MSH-10")
    pid = msg.first("PID")
    if pid is None:
        raise Hl7Reject("PID segment is missing", "AE", "100^Segment sequence error", "PID")
    patient_id = msg.component(msg.field(pid, 3))
    if not patient_id:
        raise Hl7Reject("PID-3 patient ID is missing", "AE", "101^Required field missing", "PID-3")
    zds = msg.first("ZDS")
    zds_uid = msg.component(msg.field(zds, 1)) if zds is not None else ""

    # ORDER_OBSERVATION groups (HL7 v2.5 7.3.1): an OBR and the OBX segments that follow it.
    groups: list[tuple[list[str], list[list[str]]]] = []
    for name, fields in msg.segments:
        if name == "OBR":
            groups.append((fields, []))
        elif name == "OBX" and groups:
            groups[-1][1].append(fields)
    if not groups:
        raise Hl7Reject("OBR segment is missing", "AE", "100^Segment sequence error", "OBR")
    if max_groups is not None and len(groups) > max_groups:
        raise Hl7Reject(f"more than {max_groups} result groups (hl7.max_result_groups)", "AR",
                        "207^Application internal error", "OBR")
    reports = [_group_report(msg, obr, obxs, patient_id, zds_uid, accession_fields) for obr, obxs in groups]
    return OruReport(reports, control)


def _group_report(
    msg: Message, obr: list[str], obxs: list[list[str]], patient_id: str, zds_uid: str, accession_fields: list[str]
) -> IncomingReport:
    placer = msg.component(msg.field(obr, 2))
    filler = msg.component(msg.field(obr, 3))
    accession = ""
    for path in accession_fields:
        name, _, num = path.partition("-")
        seg = obr if name == "OBR" else msg.first(name)
        accession = msg.component(msg.field(seg, int(num)))
        if accession:
            break
    # Text and StudyInstanceUID from OBX; OBX-11 as the status when OBR-25 is empty.
    lines: list[str] = []
    study_uid = ""
    obx_status = ""
    for obx in obxs:
        vtype = msg.component(msg.field(obx, 2)).upper()
        ident = msg.field(obx, 3)
        code = msg.component(ident, 1)
        value = msg.field(obx, 5)
        if code == STUDY_UID_CODE or "study instance uid" in msg.component(ident, 2).lower():
            study_uid = msg.component(value)
            continue
        if vtype not in _TEXT_TYPES:
            continue
        lines.extend(msg.text_lines(value))
        obx_status = obx_status or msg.component(msg.field(obx, 11))
    study_uid = study_uid or zds_uid
    if study_uid and not re.fullmatch(r"[0-9]+(\.[0-9]+)*", study_uid):
        raise Hl7Reject("StudyInstanceUID (OBX 113014 / ZDS-1) is not a valid UID", "AE", "102^Data type error", "OBX-5")
    text = "\n".join(lines).strip("\n")
    if not text.strip():
        raise Hl7Reject("no report text (OBX-5 of an FT/TX/ST OBX)", "AE", "101^Required field missing", "OBX-5")
    status = (msg.component(msg.field(obr, 25)) or obx_status).upper()
    if not status:
        raise Hl7Reject("result status is missing (OBR-25 or OBX-11)", "AE", "101^Required field missing", "OBR-25")
    if not (accession or filler or placer or study_uid):
        raise Hl7Reject("no accession number, order number or StudyInstanceUID", "AE", "101^Required field missing", "OBR-3")
    rtime = None
    for raw in (msg.field(obr, 22), msg.field(obr, 7), msg.field(msg.first("MSH"), 7)):
        rtime = parse_datetime(msg.component(raw))
        if rtime:
            break
    sdate = parse_date(msg.component(msg.field(obr, 7)))
    return IncomingReport(
        status=status,
        report_text=text,
        accession_number=accession or None,
        study_instance_uid=study_uid or None,
        patient_id=patient_id,
        study_date=sdate.strftime("%Y%m%d") if sdate else None,
        report_time=rtime,
        order_number=filler or placer or None,
    )


def build_ack(msg: Message | None, code: str, application: str, text: str = "", err: str = "", location: str = "") -> bytes:
    """An ACK (MSA-1 ``code``) for ``msg``; with ERR when ``code`` is not AA."""
    enc = msg.enc if msg else Encoding()
    fs, cs = enc.field, enc.component
    msh = msg.first("MSH") if msg else None

    def f(n: int) -> str:
        return msg.field(msh, n) if msg else ""

    def esc(s: str) -> str:
        # Escape our own free text (PS: HL7 v2.5 2.7.4) so a reason cannot break the message.
        out = s.replace(enc.escape, f"{enc.escape}E{enc.escape}")
        for ch, tag in ((fs, "F"), (cs, "S"), (enc.repetition, "R"), (enc.subcomponent, "T")):
            out = out.replace(ch, f"{enc.escape}{tag}{enc.escape}")
        return out.replace("\r", " ").replace("\n", " ")

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    control = msg.component(f(10)) if msg else ""
    version = f(12) or "2.5"
    trig = msg.component(f(9), 2) if msg else ""
    if not re.fullmatch(r"[A-Z0-9]{3}", trig):
        trig = ""  # echo only a well-formed trigger event (HL7 table 0003), never arbitrary content
    enc_chars = f"{cs}{enc.repetition}{enc.escape}{enc.subcomponent}"
    ack_id = f"ACK{now}{abs(hash((control, now))) % 100000:05d}"
    segs = [
        fs.join(["MSH", enc_chars, esc(application), "", f(3), f(4), now, "", f"ACK{cs}{trig}{cs}ACK" if trig else "ACK", ack_id, f(11) or "P", version]),
        fs.join(["MSA", code, esc(control)] + ([esc(text[:200])] if text else [])),
    ]
    if code != "AA":
        loc = location.split("-")
        loc_field = f"{loc[0]}{cs}1{cs}{loc[1]}" if len(loc) == 2 else (loc[0] if loc and loc[0] else "")
        segs.append(fs.join(["ERR", "", loc_field, f"{err}{cs}HL70357" if err else "", "E", "", "", "", esc(text[:200])]))
    return ("\r".join(segs) + "\r").encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Processing and MLLP listener
# ---------------------------------------------------------------------------------------------
def handle_message(data: bytes, settings: Settings, db: Database, on_report: Callable[[StoreResult], None] | None = None) -> bytes:
    """Parse, store and acknowledge one message (the payload between MLLP frame bytes)."""
    msg: Message | None = None
    app = settings.hl7.application
    try:
        text = decode_bytes(data)
        msg = Message(text)
        if not sender_allowed(settings.hl7.allowed_senders, msg):
            raise Hl7Reject("sending application/facility not allowed (hl7.allowed_senders)", "AR",
                            "207^Application internal error", "MSH-3")
        oru = parse_oru(msg, settings.hl7.accession_fields, settings.hl7.max_result_groups)
        try:
            with db.transaction() as s:
                results = [store_report(s, rep, source="hl7") for rep in oru.reports]
        except ReportError as exc:
            # The store's message may quote identifiers: log and answer with its type only.
            log.warning("HL7 report refused by the store: %s", type(exc).__name__)
            raise Hl7Reject("report refused by the report store", "AE", "207^Application internal error", "OBX-5") from None
        except Exception as exc:  # noqa: BLE001 - database trouble: AE so the sender retries
            log.error("HL7 report could not be stored: %s", type(exc).__name__)
            raise Hl7Reject("report could not be stored; retry later", "AE", "207^Application internal error") from None
        for rep, result in zip(oru.reports, results):
            log.info(
                "HL7 ORU^R01 %s: report %s version %d (%s)",
                uid_hash(oru.control_id),
                result.action,
                result.version,
                rep.status,
                extra={"study": uid_hash(rep.study_instance_uid)},
            )
            if on_report is not None and result.action != "duplicate":
                try:
                    on_report(result)
                except Exception:  # noqa: BLE001 - a hook must not turn a stored report into a NAK
                    log.exception("on_report hook failed")
        return build_ack(msg, "AA", app)
    except Hl7Reject as exc:
        log.warning("HL7 message rejected (%s): %s", exc.code, exc)
        return build_ack(msg, exc.code, app, str(exc), exc.err, exc.location)
    except Exception as exc:  # noqa: BLE001 - never leave a sender without an answer
        # Only the type: the message (and so the exception text) may hold patient data.
        log.error("HL7 message could not be processed: %s", type(exc).__name__)
        return build_ack(msg, "AE", app, "internal error processing the message", "207^Application internal error")


def host_allowed(allowed: list[str], host: str) -> bool:
    """Whether ``host`` (the peer's IP address) is inside one of the ``hl7.allowed_hosts`` networks."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in ipaddress.ip_network(n, strict=False) for n in allowed)


def sender_allowed(allowed: list[str], msg: Message) -> bool:
    """MSH-3 (and MSH-4) against ``hl7.allowed_senders`` entries ``APP`` or ``APP^FACILITY``."""
    if not allowed:
        return True
    msh = msg.first("MSH")
    app = msg.component(msg.field(msh, 3))
    fac = msg.component(msg.field(msh, 4))
    for entry in allowed:
        want_app, _, want_fac = entry.partition("^")
        if want_app == app and (not want_fac or want_fac == fac):
            return True
    return False


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


class Hl7Listener:
    """MLLP server for ORU^R01 reports.

    Parameters
    ----------
    settings
        ``settings.hl7``: bind address, port (0 picks a free one), timeouts, limits.
    db
        The node database; reports go to its ``reports`` table.
    on_report
        Optional hook called after a new report (version) is committed, e.g. to re-check waiting
        studies at once.
    """

    def __init__(self, settings: Settings, db: Database, on_report: Callable[[StoreResult], None] | None = None, port: int | None = None):
        self.settings = settings
        self.db = db
        self.on_report = on_report
        self._port = settings.hl7.port if port is None else port
        if self._port is None:
            raise Hl7Error("hl7.port is not set")
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._slots = threading.BoundedSemaphore(settings.hl7.max_connections)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self._per_host: dict[str, int] = {}
        self._ssl: ssl.SSLContext | None = None

    @property
    def port(self) -> int:
        if self._server is not None:
            return self._server.server_address[1]
        return int(self._port or 0)

    def start(self) -> Hl7Listener:
        """Bind and serve in a daemon thread (returns at once)."""
        listener = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                listener._serve_connection(self.request, self.client_address)

        try:
            self._ssl = server_context(self.settings.hl7.tls)  # ConfigError on a bad cert/key: refuse to start
            self._server = _Server((self.settings.hl7.bind, self._port), Handler)
        except OSError as exc:
            raise Hl7Error(f"cannot listen for HL7 on {self.settings.hl7.bind}:{self._port}: {exc.strerror}") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="hl7-mllp", daemon=True)
        self._thread.start()
        log.info("HL7 MLLP listener on %s:%d", self.settings.hl7.bind, self.port)
        return self

    def stop(self) -> None:
        """Stop accepting, close open connections and the socket, wait for the serving thread.

        A message being stored when ``stop`` is called is either committed and acknowledged or
        not acknowledged at all (the sender resends it): nothing acknowledged is lost.
        """
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._open_lock:
            for sock in list(self._open):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> Hl7Listener:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- one connection ------------------------------------------------------------------------
    def _reject_oversized(self, sock: socket.socket, peer, limit: int) -> None:
        # The rest of the frame cannot be resynchronised cheaply: answer AR and close.
        log.warning("HL7: frame over hl7.max_message_bytes from %s; closing", peer[0])
        ack = build_ack(None, "AR", self.settings.hl7.application, f"message larger than {limit} bytes", "207^Application internal error")
        try:
            sock.sendall(VT + ack + FS + CR)
        except OSError:
            pass

    def _serve_connection(self, sock: socket.socket, peer) -> None:
        if not host_allowed(self.settings.hl7.allowed_hosts, str(peer[0])):
            log.warning("HL7: connection from %s refused: not in hl7.allowed_hosts", peer[0])
            sock.close()
            return
        host = str(peer[0])
        with self._open_lock:
            if self._per_host.get(host, 0) >= self.settings.hl7.max_connections_per_host:
                log.warning("HL7: too many connections from %s (hl7.max_connections_per_host); closing one", host)
                sock.close()
                return
            self._per_host[host] = self._per_host.get(host, 0) + 1
        try:
            self._serve_counted(sock, peer)
        finally:
            with self._open_lock:
                self._per_host[host] -= 1
                if not self._per_host[host]:
                    del self._per_host[host]

    def _serve_counted(self, sock: socket.socket, peer) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("HL7: too many connections (hl7.max_connections); closing one from %s", peer[0])
            sock.close()
            return
        if self._ssl is not None:
            # The handshake counts against the progress deadline, so a silent TLS peer cannot hold a slot.
            try:
                sock.settimeout(self.settings.hl7.message_deadline_seconds)
                sock = self._ssl.wrap_socket(sock, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.warning("HL7: TLS handshake with %s failed: %s", peer[0], type(exc).__name__)
                self._slots.release()
                try:
                    sock.close()
                except OSError:
                    pass
                return
        with self._open_lock:
            self._open.add(sock)
        try:
            idle = self.settings.hl7.timeout_seconds
            budget = self.settings.hl7.message_deadline_seconds
            # The progress deadline runs from the first byte after the previous ACK (framed or not);
            # an idle connection with nothing sent is governed by the idle timeout alone.
            deadline: float | None = None
            buf = bytearray()
            limit = self.settings.hl7.max_message_bytes
            while True:
                # Drop anything before a start block (MLLP: bytes outside a frame are ignored).
                start = buf.find(VT)
                if start < 0:
                    buf.clear()
                elif start > 0:
                    del buf[:start]
                end = buf.find(FS + CR) if buf else -1
                if buf and end >= 0:
                    payload = bytes(buf[1:end])
                    del buf[: end + 2]
                    if len(payload) > limit:
                        self._reject_oversized(sock, peer, limit)
                        return
                    ack = handle_message(payload, self.settings, self.db, self.on_report)
                    sock.sendall(VT + ack + FS + CR)
                    deadline = None  # the next message gets its own budget
                    continue
                if len(buf) > limit + 2:
                    self._reject_oversized(sock, peer, limit)
                    return
                left = idle if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    log.warning("HL7: no complete message from %s within hl7.message_deadline_seconds; closing",
                                peer[0])
                    return
                sock.settimeout(min(idle, left))
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    if deadline is not None and deadline - time.monotonic() <= 0:
                        log.warning("HL7: no complete message from %s within hl7.message_deadline_seconds; "
                                    "closing", peer[0])
                    else:
                        log.info("HL7: idle connection from %s timed out", peer[0])
                    return
                except OSError:
                    return
                if not chunk:
                    return
                if deadline is None:
                    deadline = time.monotonic() + budget
                buf += chunk
        finally:
            self._slots.release()
            with self._open_lock:
                self._open.discard(sock)
            try:
                sock.close()
            except OSError:
                pass


def mllp_frame(message: str | bytes) -> bytes:
    """Wrap one HL7 message in an MLLP frame (for senders and tests)."""
    data = message.encode("utf-8") if isinstance(message, str) else message
    return VT + data + FS + CR


def read_frame(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Read one MLLP frame's payload from ``sock`` (for senders and tests).

    Consumes exactly one frame: bytes of a following frame stay in the socket (peek first), so
    consecutive calls read consecutive ACKs even when they arrive in one TCP segment.
    """
    sock.settimeout(timeout)
    buf = bytearray()
    while True:
        peek = sock.recv(65536, socket.MSG_PEEK)
        if not peek:
            raise Hl7Error("connection closed before a complete MLLP frame")
        # The FS of the frame end may be the last byte already read: search from there.
        carried = bytes(buf[-1:])
        end = (carried + peek).find(FS + CR)
        if end >= 0:
            buf += sock.recv(end - len(carried) + 2)  # consume through the CR, no further
            start = buf.find(VT)
            stop = buf.rfind(FS + CR)
            return bytes(buf[start + 1 : stop])
        buf += sock.recv(len(peek))
