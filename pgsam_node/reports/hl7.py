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
import asyncio
import socket
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import hl7
import hl7.util
from hl7.mllp import HL7StreamReader, HL7StreamWriter, start_hl7_server
from hl7.mllp.streams import CARRIAGE_RETURN as CR, END_BLOCK as FS, START_BLOCK as VT

from pgsam_node.config import Hl7Settings, Settings
from pgsam_node.db.session import Database
from pgsam_node.errors import Hl7Error, ReportError
from pgsam_node.logsetup import uid_hash
from pgsam_node.tls import server_context
from pgsam_node.reports.store import IncomingReport, StoreResult, store_report
from pgsam_node.reports.ris import parse_date, parse_datetime

log = logging.getLogger(__name__)

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
#: The MSH an ACK is built from when the message could not be parsed at all.
_BLANK = "MSH|^~\\&|"


class Hl7Reject(Hl7Error):
    """A message we answer with a NAK; ``code`` is MSA-1 (AE/AR), ``err`` HL7 table 0357."""

    def __init__(self, message: str, code: str = "AE", err: str = "207^Application internal error", location: str = ""):
        super().__init__(message)
        self.code = code
        self.err = err
        self.location = location


# ---------------------------------------------------------------------------------------------
# Parsing (python-hl7)
# ---------------------------------------------------------------------------------------------
#: Escape sequences (HL7 v2.5 2.7) python-hl7 does not map the way a report needs: highlighting
#: carries no text, a line break is a newline (python-hl7 maps it to a segment separator, CR).
_ESCAPE_MAP = {
    "H": "", "N": "",
    ".br": "\n", ".BR": "\n", ".sp": "\n", ".SP": "\n", ".ce": "", ".CE": "",
    ".fi": "", ".nf": "", ".in": "", ".ti": "", ".sk": "",
}


class _WithholdFieldContents(logging.Filter):
    """python-hl7 logs the whole field when it cannot decode an escape sequence; a report field
    is report text or a patient identifier, so keep the event and withhold the field."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = "python-hl7 could not decode an HL7 escape sequence (field contents withheld)"
        record.args = ()
        record.exc_info = record.exc_text = record.stack_info = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


hl7.util.logger.addFilter(_WithholdFieldContents())


class Message:
    """One HL7 v2 message parsed by python-hl7 (``hl7.parse``), after the checks the intake needs.

    ``segments`` pairs each segment's name with its :class:`hl7.Segment`; in a segment ``seg[n]``
    is field n (MSH-n for the MSH segment, as in python-hl7).
    """

    def __init__(self, text: str):
        text = text.strip("\r\n\x0b\x1c")
        segs = [s for s in re.split(r"\r\n|\r|\n", text) if s.strip()]
        if not segs or not segs[0].startswith("MSH") or len(segs[0]) < 8:
            raise Hl7Reject("message does not start with an MSH segment", "AE", "100^Segment sequence error", "MSH")
        fs, enc = segs[0][3], segs[0][4:8]
        if len(set(enc + fs)) < 5 or not all(c.isprintable() and not c.isalnum() and not c.isspace() for c in enc + fs):
            raise Hl7Reject("invalid MSH-1/MSH-2 encoding characters", "AE", "102^Data type error", "MSH-2")
        names = [seg.split(fs, 1)[0] for seg in segs]
        if not all(re.fullmatch(r"[A-Z][A-Z0-9]{2}", name) for name in names):
            # Never echo the bytes: a broken segment separator puts patient data here.
            raise Hl7Reject("invalid segment name", "AE", "100^Segment sequence error")
        if fs not in segs[0][4:]:
            segs[0] += fs  # MSH-2 alone: python-hl7 reads the encoding characters up to the next separator
        try:
            self.hl7 = hl7.parse("\r".join(segs))
        except (hl7.HL7Exception, ValueError, IndexError):
            raise Hl7Reject("message could not be parsed", "AE", "102^Data type error") from None
        self.segments: list[tuple[str, hl7.Segment]] = list(zip(names, self.hl7))

    def all(self, name: str) -> list[hl7.Segment]:
        return [seg for n, seg in self.segments if n == name]

    def first(self, name: str) -> hl7.Segment | None:
        segs = self.all(name)
        return segs[0] if segs else None

    def get(self, seg: hl7.Segment | None, field: int, component: int = 1, rep: int = 1) -> str:
        """Component ``component`` (1-based) of repetition ``rep`` of field ``field``, first
        subcomponent, unescaped and stripped; "" where the message has no such part."""
        if seg is None:
            return ""
        try:
            value = seg.extract_field(field_num=field, repeat_num=rep, component_num=component)
        except IndexError:
            return ""
        except ValueError:
            raise Hl7Reject("undecodable escape sequence", "AE", "102^Data type error") from None
        return str(value).strip()

    def raw(self, seg: hl7.Segment | None, field: int) -> str:
        """Field ``field`` as sent (still escaped); "" when absent."""
        return str(seg[field]) if seg is not None and field < len(seg) else ""

    def unescape(self, value: str) -> str:
        """Decode HL7 escape sequences (HL7 v2.5 2.7.4) with python-hl7: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\,
        \\.br\\ as a newline, \\Xhh\\ hex data (each byte one ISO 8859-1 character), highlighting dropped."""
        try:
            return str(self.hl7.unescape(value, _ESCAPE_MAP))
        except ValueError:
            raise Hl7Reject("undecodable escape sequence", "AE", "102^Data type error") from None

    def text_lines(self, seg: hl7.Segment | None, field: int) -> list[str]:
        """All repetitions of a text field (OBX-5 of FT/TX), unescaped."""
        if seg is None or field >= len(seg):
            return [""]
        return [self.unescape(str(rep)) for rep in seg[field]]

    def escape(self, value: str) -> str:
        """Escape our own free text for an ACK (python-hl7), on one line."""
        return str(self.hl7.escape("".join(c if c.isprintable() else " " for c in value)))


def decode_bytes(data: bytes) -> str:
    """Decode a message using its MSH-18 character set (UTF-8 when absent)."""
    head = re.split(r"[\r\n]", data[:1024].decode("latin-1"), maxsplit=1)[0]
    charset = ""
    if head.startswith("MSH") and len(head) > 8 and head[3] in head[8:]:
        try:
            charset = hl7.parse(head).segment("MSH").extract_field(field_num=18).strip().upper()
        except (hl7.HL7Exception, ValueError, IndexError):
            charset = ""
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
    typ, trig = msg.get(msh, 9, 1), msg.get(msh, 9, 2)
    control = msg.get(msh, 10)
    if not typ:
        raise Hl7Reject("MSH-9 message type is missing", "AE", "101^Required field missing", "MSH-9")
    if (typ, trig) != ("ORU", "R01"):
        raise Hl7Reject("unsupported message type: only ORU^R01 is accepted", "AR", "200^Unsupported message type", "MSH-9")
    if not control:
        raise Hl7Reject("MSH-10 message control ID is missing", "AE", "101^Required field missing", "MSH-10")
    pid = msg.first("PID")
    if pid is None:
        raise Hl7Reject("PID segment is missing", "AE", "100^Segment sequence error", "PID")
    patient_id = msg.get(pid, 3)
    if not patient_id:
        raise Hl7Reject("PID-3 patient ID is missing", "AE", "101^Required field missing", "PID-3")
    zds_uid = msg.get(msg.first("ZDS"), 1)

    # ORDER_OBSERVATION groups (HL7 v2.5 7.3.1): an OBR and the OBX segments that follow it.
    groups: list[tuple[hl7.Segment, list[hl7.Segment]]] = []
    for name, seg in msg.segments:
        if name == "OBR":
            groups.append((seg, []))
        elif name == "OBX" and groups:
            groups[-1][1].append(seg)
    if not groups:
        raise Hl7Reject("OBR segment is missing", "AE", "100^Segment sequence error", "OBR")
    if max_groups is not None and len(groups) > max_groups:
        raise Hl7Reject(f"more than {max_groups} result groups (hl7.max_result_groups)", "AR",
                        "207^Application internal error", "OBR")
    reports = [_group_report(msg, obr, obxs, patient_id, zds_uid, accession_fields) for obr, obxs in groups]
    return OruReport(reports, control)


def _group_report(
    msg: Message, obr: hl7.Segment, obxs: list[hl7.Segment], patient_id: str, zds_uid: str, accession_fields: list[str]
) -> IncomingReport:
    placer = msg.get(obr, 2)
    filler = msg.get(obr, 3)
    accession = ""
    for path in accession_fields:
        name, _, num = path.partition("-")
        accession = msg.get(obr if name == "OBR" else msg.first(name), int(num))
        if accession:
            break
    # Text and StudyInstanceUID from OBX; OBX-11 as the status when OBR-25 is empty.
    lines: list[str] = []
    study_uid = ""
    obx_status = ""
    for obx in obxs:
        vtype = msg.get(obx, 2).upper()
        if msg.get(obx, 3, 1) == STUDY_UID_CODE or "study instance uid" in msg.get(obx, 3, 2).lower():
            study_uid = msg.get(obx, 5)
            continue
        if vtype not in _TEXT_TYPES:
            continue
        lines.extend(msg.text_lines(obx, 5))
        obx_status = obx_status or msg.get(obx, 11)
    study_uid = study_uid or zds_uid
    if study_uid and not re.fullmatch(r"[0-9]+(\.[0-9]+)*", study_uid):
        raise Hl7Reject("StudyInstanceUID (OBX 113014 / ZDS-1) is not a valid UID", "AE", "102^Data type error", "OBX-5")
    text = "\n".join(lines).strip("\n")
    if not text.strip():
        raise Hl7Reject("no report text (OBX-5 of an FT/TX/ST OBX)", "AE", "101^Required field missing", "OBX-5")
    status = (msg.get(obr, 25) or obx_status).upper()
    if not status:
        raise Hl7Reject("result status is missing (OBR-25 or OBX-11)", "AE", "101^Required field missing", "OBR-25")
    if not (accession or filler or placer or study_uid):
        raise Hl7Reject("no accession number, order number or StudyInstanceUID", "AE", "101^Required field missing", "OBR-3")
    rtime = None
    for seg, n in ((obr, 22), (obr, 7), (msg.first("MSH"), 7)):
        rtime = parse_datetime(msg.get(seg, n))
        if rtime:
            break
    sdate = parse_date(msg.get(obr, 7))
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
    """An ACK (MSA-1 ``code``) for ``msg``, built with python-hl7 in ``msg``'s encoding characters;
    with ERR when ``code`` is not AA.

    Only MSH-3/4/10/11/12, a well-formed MSH-9 trigger event and our own (escaped) reason are echoed:
    never a patient field or report text.
    """
    try:
        return _ack(msg or Message(_BLANK), code, application, text, err, location)
    except Exception as exc:  # noqa: BLE001 - an ACK must always come out: in the default encoding then
        log.warning("HL7: ACK in the message's encoding characters failed (%s)", type(exc).__name__)
        return _ack(Message(_BLANK), code, application, text, err, location)


def _ack(msg: Message, code: str, application: str, text: str, err: str, location: str) -> bytes:
    src = msg.first("MSH")
    fs, enc = msg.raw(src, 1), msg.raw(src, 2)[:4]
    ack = hl7.parse(f"MSH{fs}{enc}{fs}\rMSA{fs}" + (f"\rERR{fs}" if code != "AA" else ""))
    msh, msa = ack.segment("MSH"), ack.segment("MSA")
    trig, control = _echo(msg, src, 9, 2), _echo(msg, src, 10, 1)
    if not re.fullmatch(r"[A-Z0-9]{3}", trig):
        trig = ""  # echo only a well-formed trigger event (HL7 table 0003), never arbitrary content
    msh.assign_field(msg.escape(application), 3)
    msh.assign_field(msg.raw(src, 3), 5)
    msh.assign_field(msg.raw(src, 4), 6)
    msh.assign_field(dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S"), 7)
    for i, part in enumerate(["ACK", trig, "ACK"] if trig else ["ACK"], start=1):
        msh.assign_field(part, 9, 1, i)
    msh.assign_field(hl7.generate_message_control_id(), 10)
    msh.assign_field(msg.raw(src, 11) or "P", 11)
    msh.assign_field(msg.raw(src, 12) or "2.5", 12)
    msa.assign_field(code, 1)
    msa.assign_field(msg.escape(control), 2)
    if text:
        msa.assign_field(msg.escape(text[:200]), 3)
    if code != "AA":
        errseg = ack.segment("ERR")
        loc = location.split("-")
        for i, part in enumerate([loc[0], "1", loc[1]] if len(loc) == 2 else [loc[0]], start=1):
            errseg.assign_field(part, 2, 1, i)
        if err:
            for i, part in enumerate([*err.split("^"), "HL70357"], start=1):
                errseg.assign_field(part, 3, 1, i)
        errseg.assign_field("E", 4)
        errseg.assign_field(msg.escape(text[:200]), 8)
    return str(ack).encode("utf-8")


def _echo(msg: Message, seg: hl7.Segment | None, field: int, component: int) -> str:
    # An ACK must always come out: a field that cannot be decoded is not echoed.
    try:
        return msg.get(seg, field, component)
    except Hl7Reject:
        return ""


# ---------------------------------------------------------------------------------------------
# Processing and MLLP listener
# ---------------------------------------------------------------------------------------------
def handle_message(data: bytes, hl7s: Hl7Settings, db: Database, on_report: Callable[[StoreResult], None] | None = None) -> bytes:
    """Parse, store and acknowledge one message (the payload between MLLP frame bytes).

    ``hl7s`` is the ``hl7`` settings section (ACK application, allowed senders, accession fields,
    result-group limit).
    """
    msg: Message | None = None
    app = hl7s.application
    try:
        text = decode_bytes(data)
        msg = Message(text)
        if not sender_allowed(hl7s.allowed_senders, msg):
            raise Hl7Reject("sending application/facility not allowed (hl7.allowed_senders)", "AR",
                            "207^Application internal error", "MSH-3")
        oru = parse_oru(msg, hl7s.accession_fields, hl7s.max_result_groups)
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
    app, fac = msg.get(msh, 3), msg.get(msh, 4)
    for entry in allowed:
        want_app, _, want_fac = entry.partition("^")
        if want_app == app and (not want_fac or want_fac == fac):
            return True
    return False


class Hl7Listener:
    """MLLP server for ORU^R01 reports, on python-hl7's asyncio MLLP streams (``hl7.mllp``).

    The event loop runs in one daemon thread; storing a message (blocking database work) runs in a
    thread pool of ``hl7.max_connections`` workers, so a slow store never stalls other connections.

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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._ssl: ssl.SSLContext | None = None
        # Touched only on the event loop's thread.
        self._connections: dict[asyncio.Task, HL7StreamWriter] = {}
        self._per_host: dict[str, int] = {}

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        if self._server is None or not self._server.sockets:
            return (self.settings.hl7.bind, int(self._port or 0))
        host, port = self._server.sockets[0].getsockname()[:2]
        return (str(host), int(port))

    @property
    def port(self) -> int:
        return self.address[1]

    def start(self) -> Hl7Listener:
        """Bind and serve in a daemon thread (returns at once)."""
        hl7s = self.settings.hl7
        self._ssl = server_context(hl7s.tls)  # ConfigError on a bad cert/key: refuse to start
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="hl7-mllp", daemon=True)
        self._thread.start()
        self._loop = loop
        self._pool = ThreadPoolExecutor(max_workers=hl7s.max_connections, thread_name_prefix="hl7-store")
        # The reader's limit is the message size: a longer frame (or that much noise) is refused.
        serve = start_hl7_server(self._on_connection, hl7s.bind, self._port, limit=hl7s.max_message_bytes,
                                 reuse_address=True)
        try:
            self._server = asyncio.run_coroutine_threadsafe(serve, loop).result(timeout=30)
        except OSError as exc:
            self.stop()
            raise Hl7Error(f"cannot listen for HL7 on {hl7s.bind}:{self._port}: {exc.strerror}") from exc
        log.info("HL7 MLLP listener on %s:%d", hl7s.bind, self.port)
        return self

    def stop(self) -> None:
        """Stop accepting, close open connections and the socket, wait for the serving thread.

        A message being stored when ``stop`` is called is either committed and acknowledged or
        not acknowledged at all (the sender resends it): nothing acknowledged is lost.
        """
        loop = self._loop
        if loop is None:
            return
        if loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=30)
            except Exception as exc:  # noqa: BLE001 - stopping goes on regardless
                log.warning("HL7 listener shutdown: %s", type(exc).__name__)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        loop.close()
        self._loop = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._connections.values():
            writer.transport.abort()
        if self._connections:
            # Each connection ends once its store (if any) has finished: nothing is left half done.
            await asyncio.wait(list(self._connections), timeout=20)
        self._server = None

    def __enter__(self) -> Hl7Listener:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- one connection (on the event loop) ----------------------------------------------------
    async def _on_connection(self, reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        host = str(peer[0])
        hl7s = self.settings.hl7
        task = asyncio.current_task()
        try:
            if not host_allowed(hl7s.allowed_hosts, host):
                log.warning("HL7: connection from %s refused: not in hl7.allowed_hosts", host)
                return
            if self._per_host.get(host, 0) >= hl7s.max_connections_per_host:
                log.warning("HL7: too many connections from %s (hl7.max_connections_per_host); closing one", host)
                return
            if len(self._connections) >= hl7s.max_connections:
                log.warning("HL7: too many connections (hl7.max_connections); closing one from %s", host)
                return
            assert task is not None
            self._connections[task] = writer
            self._per_host[host] = self._per_host.get(host, 0) + 1
            try:
                await self._serve(reader, writer, host)
            finally:
                self._per_host[host] -= 1
                if not self._per_host[host]:
                    del self._per_host[host]
                self._connections.pop(task, None)
        except Exception as exc:  # noqa: BLE001 - a connection's trouble ends that connection only
            log.warning("HL7: connection from %s ended: %s", host, type(exc).__name__)
        finally:
            writer.close()

    async def _serve(self, reader: HL7StreamReader, writer: HL7StreamWriter, host: str) -> None:
        hl7s = self.settings.hl7
        if self._ssl is not None:
            # The handshake counts against the progress deadline, so a silent TLS peer cannot hold a slot.
            try:
                await writer.start_tls(self._ssl, ssl_handshake_timeout=hl7s.message_deadline_seconds)
            except (TimeoutError, OSError, ssl.SSLError) as exc:
                log.warning("HL7: TLS handshake with %s failed: %s", host, type(exc).__name__)
                return
        loop = asyncio.get_running_loop()
        while True:
            # Bytes before a start block are ignored (MLLP). An idle connection is governed by the
            # idle timeout; once the start block is in, the message has the progress deadline.
            if await self._read(reader, writer, host, VT, hl7s.timeout_seconds, "idle") is None:
                return
            block = await self._read(reader, writer, host, FS + CR, hl7s.message_deadline_seconds, "deadline")
            if block is None:
                return
            assert self._pool is not None
            ack = await loop.run_in_executor(self._pool, handle_message, block[:-2], self.settings.hl7, self.db,
                                             self.on_report)
            writer.writeblock(ack)
            await writer.drain()

    async def _read(self, reader: HL7StreamReader, writer: HL7StreamWriter, host: str, until: bytes, seconds: float,
                    why: str) -> bytes | None:
        """Bytes through ``until`` within ``seconds``; None when the connection is to end."""
        try:
            return await asyncio.wait_for(reader.readuntil(until), seconds)
        except TimeoutError:
            if why == "idle":
                log.info("HL7: idle connection from %s timed out", host)
            else:
                log.warning("HL7: no complete message from %s within hl7.message_deadline_seconds; closing", host)
        except asyncio.LimitOverrunError:
            await self._reject_oversized(writer, host)
        except (asyncio.IncompleteReadError, OSError):
            pass
        return None

    async def _reject_oversized(self, writer: HL7StreamWriter, host: str) -> None:
        # The rest of the frame cannot be resynchronised cheaply: answer AR and close.
        limit = self.settings.hl7.max_message_bytes
        log.warning("HL7: frame over hl7.max_message_bytes from %s; closing", host)
        writer.writeblock(build_ack(None, "AR", self.settings.hl7.application, f"message larger than {limit} bytes",
                                    "207^Application internal error"))
        try:
            await writer.drain()
        except OSError:
            pass


def mllp_frame(message: str | bytes) -> bytes:
    """Wrap one HL7 message in an MLLP frame (for senders and tests)."""
    data = message.encode("utf-8") if isinstance(message, str) else message
    return VT + data + FS + CR  # what hl7.mllp's MLLPStreamWriter.writeblock sends


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
