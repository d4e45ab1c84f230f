"""DICOM listener: Verification and Storage SCP (PS3.4 Annex A and B), and the Storage Commitment
report receiver (PS3.4 J.3.3), on the node's own acceptor (:mod:`pgsam_node.ingest.dicomnet`).

Association policy (checked when the A-ASSOCIATE-RQ arrives, PS3.8 7.1.1.9):

* calling AE title not on ``dicom.allowed_calling_aets`` (entries ``AET`` or ``AET@host``; empty =
  everyone) -> A-ASSOCIATE-RJ permanent, service-user, "calling AE title not recognised";
* free disk below ``dicom.refuse_below_free_bytes`` -> A-ASSOCIATE-RJ transient,
  service-provider (presentation), "temporary congestion", so the PACS retries later;
* more than ``dicom.max_associations`` at once -> transient "local limit exceeded";
* receiving paused by the operator (:mod:`pgsam_node.db.switches`) -> transient, service-provider
  (presentation), "temporary congestion": see :func:`receiving_paused_rejection`.

C-STORE (PS3.4 B.2.3): the data set is streamed, fragment by fragment as it arrives, into a
temporary Part-10 file in the accepted transfer syntax (byte for byte, nothing decoded); its
identifying UIDs are scanned from the first bytes (:mod:`pgsam_node.ingest.headscan`; pydicom reads the
full header only for the first instance of a series, which is when classification needs it); the
file is placed in the spool and indexed, then made durable (``storage.write_protocol``: one journal
record and a shared flush, or the file's and directory's fsync); only then does the success status
go back (persist before acknowledge). Failures become statuses with an Error Comment: 0xA700 out of
resources (disk below the reserve or full, database unavailable), 0xC210 cannot understand
(unparseable, no UIDs). The listener keeps serving after any of them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

from pgsam_node.db import switches
from pgsam_node.ingest import headscan
from pgsam_node.ingest import spool
from pgsam_node.ingest.dicomnet import dimse
from pgsam_node.ingest.dicomnet.acceptor import Acceptor, Association, Limits, Rejection
from pgsam_node.ingest.dicomnet.pdu import safe_ae
from pgsam_node.errors import ReceiveError, UnparseableDatasetError
from pgsam_node.ingest.index import FastIndexSession, InstanceHeader, index_instance, parse_header, quick_header
from pgsam_node.ingest.uids import uid_problem
from pgsam_node.logsetup import install_redaction, redact_values, uid_hash
from pgsam_node.tls import server_context

log = logging.getLogger(__name__)

# PS3.4 Annex B.2.3 C-STORE status codes.
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_PROCESSING_FAILURE = 0x0110


def _parse_allow_entry(entry: str) -> tuple[str, str | None]:
    aet, _, host = entry.partition("@")
    return aet.strip(" "), (host.strip() or None)


def calling_ae_allowed(allow: list[str], calling_aet: str, peer_host: str | None) -> bool:
    """Whether ``calling_aet`` from ``peer_host`` may associate (empty allow-list = everyone).

    Parameters
    ----------
    allow
        Entries ``AET`` (any host) or ``AET@host`` (host is an IP address or name compared as text
        with the peer address).
    """
    if not allow:
        return True
    # PS3.5 6.2 (AE): only leading and trailing *spaces* are insignificant; a tab or any other
    # control character is not part of a valid AE title, so such a title never matches.
    aet = (calling_aet or "").strip(" ")
    if any(ord(c) < 32 or ord(c) > 126 or c == "\\" for c in aet):
        return False
    for entry in allow:
        want_aet, want_host = _parse_allow_entry(entry)
        if want_aet == aet and (want_host is None or want_host == peer_host):
            return True
    return False


class Listener:
    """The node's DICOM SCP.

    Parameters
    ----------
    settings
        Node settings (``dicom.*``, ``storage.*``, ``classify.*``).
    db
        :class:`~pgsam_node.db.Database` used for the index.
    on_release
        Optional callback ``f(study_uids: set[str])`` called when an association that stored
        instances ends (a hint for an early stability check; stability itself is time-based).
    paused
        Callable answering whether receiving is paused, asked once per association request;
        default: the ``receiving`` switch in ``db`` (:func:`pgsam_node.db.switches.paused_now`).
    sock
        The DICOM port's listening socket when it was bound earlier (``serve`` binds it first);
        None: bind ``dicom.bind``/``dicom.port`` in :meth:`start`.
    shared, gate, journal_dir
        In an acceptor worker process (:mod:`pgsam_node.ingest.workers`): ``sock`` is shared with
        the other workers, ``gate`` counts the association limits node-wide, and the process has
        its own journal directory. Default: the socket is ours, limits are counted here, and the
        journal is ``<storage>/journal``.
    """

    def __init__(self, settings, db, on_release: Callable[[set[str]], None] | None = None,
                 paused: Callable[[], bool] | None = None, sock=None, shared: bool = False, gate=None,
                 journal_dir: Path | None = None):
        self.settings = settings
        self.db = db
        self.on_release = on_release
        self.paused = paused if paused is not None else (lambda: switches.paused_now(db, switches.RECEIVING))
        # pydicom's warnings about malformed elements quote their values (patient names, IDs):
        # every record is made safe at creation, whoever configured logging.
        install_redaction()
        self._server: Acceptor | None = None
        self._lock = threading.Lock()
        #: Counters since start (for status/metrics): stored, failed, rejected associations.
        self.counters = {"stored": 0, "failed": 0, "rejected": 0, "quarantined": 0}
        self._quarantine_seq = 0
        #: Series with an indexed instance: later instances need only the identity scan.
        self._known_series: set[str] = set()
        self._commitment = any(dest.storage_commitment for dest in settings.destinations)
        self._journal = None  # the write-ahead journal, open while the listener runs
        self._sock, self._shared, self._gate, self._journal_dir = sock, shared, gate, journal_dir

    # ---- lifecycle ---------------------------------------------------------------------------
    def _supported(self) -> tuple[dict[str, frozenset[str]], frozenset[str]]:
        # Every standard storage SOP class (MR, Enhanced MR, SC, SEG, SR, RT ...) in every transfer
        # syntax pydicom knows, incl. deflate, JPEG baseline/lossless, JPEG-LS, JPEG 2000 and RLE:
        # the bytes are stored as received, so no codec is needed to accept them.
        every = frozenset(str(t) for t in ALL_TRANSFER_SYNTAXES)
        supported = {str(cx.abstract_syntax): every for cx in AllStoragePresentationContexts}
        supported[str(Verification)] = frozenset(str(t) for t in ALL_TRANSFER_SYNTAXES[:4])
        roles: frozenset[str] = frozenset()
        if self._commitment:
            # PS3.4 J.3.3: the PACS reports storage commitment on an association it opens, as SCP.
            from pgsam_node.ingest.commitment import COMMITMENT_SOP_CLASS

            supported[COMMITMENT_SOP_CLASS] = frozenset(str(t) for t in ALL_TRANSFER_SYNTAXES[:4])
            roles = frozenset({COMMITMENT_SOP_CLASS})
        return supported, roles

    def start(self) -> None:
        """Bind and serve in background threads (returns immediately)."""
        if self._server is not None:
            return
        d = self.settings.dicom
        self.settings.spool_dir.mkdir(parents=True, exist_ok=True)
        self.settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        supported, roles = self._supported()
        ssl_ctx = server_context(d.tls)
        limits = Limits(
            max_associations=d.max_associations, max_associations_per_host=d.max_associations_per_host,
            max_pending=d.max_pending_connections, max_pending_per_host=d.max_pending_per_host,
            associate_rq_deadline=d.associate_rq_deadline, max_associate_rq=d.max_associate_rq_bytes,
            max_command=d.max_command_bytes, pdu_deadline=d.pdu_deadline, message_deadline=d.message_deadline,
        )
        self._server = Acceptor(
            self, d.bind, d.port, supported, roles, max_associations=d.max_associations, timeout=d.network_timeout,
            ssl_context=ssl_ctx, max_pdu=d.max_pdu_bytes, implementation_class_uid=spool.IMPLEMENTATION_CLASS_UID,
            implementation_version_name=spool.IMPLEMENTATION_VERSION_NAME, limits=limits,
            sock=self._sock, shared=self._shared, gate=self._gate,
        )
        self._temp_files = spool.TempFiles(self.settings)
        self._journal = None
        if self.settings.storage.fsync and self.settings.storage.write_protocol == "journal":
            from pgsam_node.ingest.journal import Journal

            self._journal = Journal(self.settings, self._journal_dir).open()
        self._server.start()
        log.info("DICOM listener %s on %s:%d%s", d.ae_title, d.bind, self.port, " (TLS)" if ssl_ctx else "")

    def stop(self) -> None:
        """Stop accepting, end open associations, release the port."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server = None
        self._temp_files.close()
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        log.info("DICOM listener stopped")

    @property
    def port(self) -> int:
        """The bound TCP port (useful with ``dicom.port: 0``)."""
        if self._server is None:
            return self.settings.dicom.port
        return self._server.server_address[1]

    @property
    def active_associations(self) -> list[Association]:
        """Associations open now."""
        return self._server.active_associations if self._server is not None else []

    # ---- association policy ------------------------------------------------------------------
    def check_association(self, rq, assoc: Association) -> Rejection | None:
        d = self.settings.dicom
        calling, host = rq.calling_ae, assoc.peer_host
        rejection = None
        if d.require_called_aet and rq.called_ae.strip(" ") != d.ae_title:
            log.warning("association from %s@%s rejected: called AE title %s is not ours", safe_ae(calling), host,
                        safe_ae(rq.called_ae))
            rejection = Rejection(1, 1, 7, "called AE title not recognised")
        elif not calling_ae_allowed(d.allowed_calling_aets, calling, host):
            log.warning("association from %s@%s rejected: calling AE title not allowed", safe_ae(calling), host)
            rejection = Rejection(1, 1, 3, "calling AE title not recognised")
        elif d.refuse_below_free_bytes:
            free = spool.free_bytes(self.settings.storage_root)
            if free < d.refuse_below_free_bytes:
                log.warning("association from %s@%s rejected: %d bytes free, below dicom.refuse_below_free_bytes",
                            safe_ae(calling), host, free)
                rejection = Rejection(2, 3, 1, "temporary congestion")
        if rejection is None:
            rejection = receiving_paused_rejection(self.paused, calling, host)
        if rejection is not None:
            with self._lock:
                self.counters["rejected"] += 1
        return rejection

    # ---- services ------------------------------------------------------------------------------
    def echo(self, assoc: Association) -> int:
        return STATUS_SUCCESS

    def begin_store(self, assoc: Association, transfer_syntax: str, command: dict) -> "_StoreInstance":
        return _StoreInstance(self, assoc, transfer_syntax, command)

    def event_report(self, assoc: Association, transfer_syntax: str, command: dict, dataset: bytes) -> int:
        from pydicom.filereader import read_dataset
        from pydicom.uid import UID

        from pgsam_node.ingest.commitment import record_commitment_report

        ts = UID(transfer_syntax)
        try:
            info = read_dataset(BytesIO(dataset), ts.is_implicit_VR, ts.is_little_endian)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types
            log.error("N-EVENT-REPORT from %s cannot be parsed: %s", safe_ae(assoc.calling_ae), type(exc).__name__)
            return 0x0110
        sop_class = str(command.get(dimse.AFFECTED_SOP_CLASS_UID, ""))
        return record_commitment_report(self.db, self.settings, assoc.calling_ae, sop_class, info)

    def association_ended(self, assoc: Association, released: bool) -> None:
        fast = assoc.data.pop("index", None)
        if fast is not None:
            fast.close()
        studies = assoc.data.get("studies")
        if studies and self.on_release is not None:
            try:
                self.on_release(set(studies))
            except Exception:  # noqa: BLE001 - a hint must never break the listener
                log.exception("association-release hook failed")

    def _count(self, key: str) -> None:
        with self._lock:
            self.counters[key] += 1


def receiving_paused_rejection(paused: Callable[[], bool], calling: str, host: str | None) -> Rejection | None:
    """The A-ASSOCIATE-RJ for a new association while the operator has paused receiving, else None.

    PS3.8 9.3.4: result 2 *rejected-transient*, source 3 *DICOM UL service-provider (presentation
    related function)*, reason 1 *temporary-congestion* — the same answer as the disk reserve. A
    transient rejection tells the PACS to keep the images and retry later (source 1 / reason 1,
    service-user "no reason given", would say nothing about when); the node loses nothing
    because it stored nothing. Associations already open are not affected. A switch that
    cannot be read (database down) does not refuse: the C-STORE then answers 0xA700 itself.
    """
    try:
        if not paused():
            return None
    except Exception as exc:  # noqa: BLE001 - the hook must never break the acceptor
        log.warning("receiving switch unreadable (%s); association admitted", type(exc).__name__)
        return None
    log.warning("association from %s@%s rejected: receiving paused by the operator", safe_ae(calling), host)
    return Rejection(2, 3, 1, "receiving paused by the operator")


#: Bytes of a data set kept in memory for the identity scan (the UIDs sit in the first few hundred).
_HEAD_BYTES = 64 * 1024
#: PS3.4 B.2.3: "Data Set does not match SOP Class" - also what DCMTK's storescp answers when the
#: data set's SOP Class or Instance UID differs from the request's.
STATUS_DATASET_MISMATCH = 0xA900
#: PS3.7 C.4 general status "Duplicate SOP Instance" (dicom.resend_policy: reject).
STATUS_DUPLICATE = 0x0111
#: PS3.4 B.2.3 warning class (0xB000): the instance is safe here, but not filed as the sender
#: asked - a conflicting re-send kept in quarantine (dicom.resend_policy: keep_and_flag). A
#: warning, not a failure: a failure makes the PACS retry a send that will always conflict, each
#: retry adding a copy; the Error Comment and the audit log say what happened.
STATUS_KEPT_IN_QUARANTINE = 0xB000
DEFLATED = "1.2.840.10008.1.2.1.99"


class _Refused(Exception):
    """A C-STORE refused with a specific status (and nothing kept in the spool)."""

    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status, self.why = status, why


def _check_uids(h: InstanceHeader) -> None:
    """Refuse (0xC210) a data set whose identifying UIDs are not valid UIDs (PS3.5 9.1)."""
    for value, name in ((h.sop_class_uid, "SOPClassUID"), (h.sop_uid, "SOPInstanceUID"),
                        (h.study_uid, "StudyInstanceUID"), (h.series_uid, "SeriesInstanceUID")):
        problem = uid_problem(value, name)
        if problem:
            raise UnparseableDatasetError(problem)


class _StoreInstance:
    """One C-STORE: stream to a temporary file, then identify, commit, index (PS3.4 B.2.3)."""

    def __init__(self, listener: Listener, assoc: Association, ts: str, command: dict):
        self.listener = listener
        self.assoc = assoc
        self.ts = ts
        self.sop_class = str(command.get(dimse.AFFECTED_SOP_CLASS_UID, ""))
        self.sop_uid = str(command.get(dimse.AFFECTED_SOP_INSTANCE_UID, ""))
        self.calling = assoc.calling_ae or None
        self.head = bytearray()
        self.error: tuple[int, str] | None = None
        self.file: spool.IncomingFile | None = None
        self.stored: spool.StoredFile | None = None
        problem = (uid_problem(self.sop_class, "request AffectedSOPClassUID")
                   or uid_problem(self.sop_uid, "request AffectedSOPInstanceUID"))
        if problem:
            self.error = (STATUS_CANNOT_UNDERSTAND, problem)  # the data set is read and dropped
            return
        try:
            self.meta = spool.file_meta_bytes(self.sop_class, self.sop_uid, ts, self.calling)
            self.file = spool.IncomingFile(listener.settings, self.meta, listener._temp_files,
                                           max_bytes=listener.settings.dicom.max_dataset_bytes,
                                           journal=listener._journal)
        except Exception as exc:  # noqa: BLE001 - mapped to a status at the end of the data set
            self.error = self._status_for(exc)

    def write(self, fragment: memoryview) -> None:
        if self.error is not None:
            return  # already failed: the rest of the data set is read and dropped
        if len(self.head) < _HEAD_BYTES:
            self.head += fragment[:_HEAD_BYTES - len(self.head)]
        try:
            self.file.write(fragment)
        except Exception as exc:  # noqa: BLE001
            self.error = self._status_for(exc)

    def discard(self) -> None:
        if self.file is not None:
            self.file.discard()

    def finish(self) -> tuple[int, str | None]:
        lst = self.listener
        if self.error is None:
            try:
                status, why = self._commit()
                if status in (STATUS_SUCCESS, STATUS_KEPT_IN_QUARANTINE):
                    self.file.make_durable()  # persist before acknowledge (journal protocol)
                return status, why
            except _Refused as exc:
                self.discard()
                self.error = (exc.status, exc.why)
            except Exception as exc:  # noqa: BLE001 - e.g. the database is down: tell the peer to retry
                self.discard()
                self.error = self._status_for(exc)
        status, why = self.error
        lst._count("failed")
        log.error("instance %s refused (0x%04X): %s", uid_hash(self.sop_uid), status, why)
        return status, why

    def _status_for(self, exc: Exception) -> tuple[int, str]:
        if isinstance(exc, UnparseableDatasetError):
            return STATUS_CANNOT_UNDERSTAND, str(exc)
        if isinstance(exc, ReceiveError):  # incl. StorageFullError
            return STATUS_OUT_OF_RESOURCES, str(exc)
        log.exception("unexpected error storing an instance")
        return STATUS_OUT_OF_RESOURCES, f"{type(exc).__name__}: {redact_values(str(exc))}"

    def _full_header(self) -> InstanceHeader:
        """pydicom's reading of the header (all the classification evidence), bounded: at most
        ``dicom.max_header_parse_bytes`` of the data set are read (stop before pixel data)."""
        d = self.listener.settings.dicom
        path = self.file.tmp if self.stored is None else str(self.stored.path)
        with open(path, "rb") as fh:
            if self.ts == DEFLATED:
                head = inflate_head(fh, self.file.meta_len, d)
                meta = spool.file_meta_bytes(self.sop_class, self.sop_uid, headscan.EXPLICIT_VR_LE)
                return parse_header(BytesIO(meta + head), self.sop_class)
            return parse_header(BytesIO(fh.read(self.file.meta_len + d.max_header_parse_bytes)), self.sop_class)

    def _identify(self) -> InstanceHeader:
        lst = self.listener
        complete = self.file.size - self.file.meta_len <= len(self.head)
        values = headscan.scan_identity(self.head, self.ts, complete=complete)
        h = quick_header(values, self.sop_class) if values is not None else None
        if self.ts == DEFLATED or h is None or h.series_uid not in lst._known_series:
            # Not Little Endian, not scannable with certainty, or the first instance of a series
            # this process sees (classification needs its full header): pydicom reads it, before
            # anything reaches the spool (0xC210 if it cannot). Deflate is inflated with a cap.
            h = self._full_header()
        _check_uids(h)
        if h.sop_uid != self.sop_uid or h.sop_class_uid != self.sop_class:
            # PS3.4 B.2.3 / PS3.7 9.3.1.1: the request names the instance it carries; a data set
            # that is another instance is refused, never filed under either identity.
            raise _Refused(STATUS_DATASET_MISMATCH,
                           "the data set's SOP Class or Instance UID differs from the C-STORE request's")
        return h

    def _commit(self) -> tuple[int, str | None]:
        lst, settings = self.listener, self.listener.settings
        h = self._identify()
        rel = spool.spool_relpath(h.study_uid, h.series_uid, h.sop_uid)
        try:
            self.stored = self.file.commit(rel, replace=False)
        except spool.AlreadyStored as exc:
            outcome = self._same_path(rel, exc.path)
            if outcome is not None:
                return outcome
        fast = self.assoc.data.get("index")
        if fast is None:
            fast = self.assoc.data["index"] = FastIndexSession(lst.db)
        full = None if h.headers else self._full_header
        res = index_instance(lst.db, settings, h, rel, self.stored.size, self.ts, self.calling, full_header=full,
                             fast=fast)
        if res.conflict:
            return self._conflict(h, res.conflict, res.existing_path, placed=rel)
        with lst._lock:
            if len(lst._known_series) > 100_000:
                lst._known_series.clear()
            lst._known_series.add(h.series_uid)
            lst.counters["stored"] += 1
            self.assoc.data.setdefault("studies", set()).add(h.study_uid)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("stored instance %s (series %s, study %s)%s", uid_hash(h.sop_uid), uid_hash(h.series_uid),
                      uid_hash(h.study_uid), " replaced" if res.replaced else "")
        return STATUS_SUCCESS, None

    def _same_path(self, rel: str, path: str) -> tuple[int, str | None] | None:
        """The instance is already stored at this path (same study, series and SOP Instance UID).
        Same calling AE: a re-send that replaces it (idempotent). Another AE with the very same
        data set: nothing to change. Another AE with other content: a conflict. Returns the status
        to answer, or None to go on and index ``self.stored``."""
        from pydicom.filereader import read_file_meta_info

        try:
            source = str(read_file_meta_info(path).get("SourceApplicationEntityTitle", "")).strip() or None
        except Exception:  # noqa: BLE001 - an unreadable kept file: treat as another source
            source = "?"
        if source == (self.calling.strip() if self.calling else None):
            self.stored = self.file.replace_existing(rel)
            return None
        if self.file.same_data_set_as(path):
            self.file.discard()
            self.stored = spool.StoredFile(Path(path), rel, os.stat(path).st_size)
            return None
        h = InstanceHeader("", "", self.sop_uid, self.sop_class)
        return self._conflict(h, "stored from another calling AE with other content", rel, placed=None)

    def _conflict(self, h: InstanceHeader, why: str, existing_rel: str | None, placed: str | None):
        """Apply ``dicom.resend_policy`` to a conflicting re-send; the first copy is never touched.

        ``placed``: spool path where the new copy already lies (it is moved out), else the new copy
        is still this instance's temporary file."""
        lst, settings = self.listener, self.listener.settings
        policy = settings.dicom.resend_policy
        root = settings.storage_root
        if policy == "reject":
            if placed is not None:
                (root / placed).unlink(missing_ok=True)
            else:
                self.file.discard()
            raise _Refused(STATUS_DUPLICATE, f"SOP Instance UID already {why}; refused (dicom.resend_policy=reject)")
        with lst._lock:
            lst._quarantine_seq += 1
            n = lst._quarantine_seq
        qrel = spool.quarantine_relpath(h.sop_uid, n)
        if placed is not None:
            (root / qrel).parent.mkdir(parents=True, exist_ok=True)
            os.rename(root / placed, root / qrel)
            self.file.moved(qrel)
            if settings.storage.fsync:
                spool.fsync_dirs((root / qrel).parent, (root / placed).parent)
        else:
            self.file.commit(qrel, replace=False)
        record_quarantine(lst.db, h.sop_uid, qrel, existing_rel, self.calling, self.assoc.peer_host, why, policy)
        lst._count("quarantined")
        log.warning("instance %s %s: first copy kept, new copy quarantined (dicom.resend_policy=%s)",
                    uid_hash(h.sop_uid), why, policy)
        return STATUS_KEPT_IN_QUARANTINE, "SOP Instance UID already stored elsewhere; first kept, this copy quarantined"


def record_quarantine(db, sop_uid: str, quarantine_rel: str, existing_rel: str | None, calling: str | None,
                      host: str, why: str, policy: str) -> None:
    """Record a quarantined re-send in the audit log (action ``resend_conflict``)."""
    from pgsam_node.db.models import AuditLog

    with db.transaction() as s:
        s.add(AuditLog(actor=f"dicom:{safe_ae(calling or '')}"[:128], action="resend_conflict", target=sop_uid,
                       detail={"quarantine_path": quarantine_rel, "kept_path": existing_rel, "reason": why,
                               "policy": policy}, remote_addr=host))


def inflate_head(fh, offset: int, dicom_settings) -> bytes:
    """Stream-inflate a Deflated Explicit VR Little Endian data set (PS3.5 A.5) from ``offset``:
    check the whole stream against ``dicom.max_inflate_ratio`` and ``dicom.max_inflated_bytes``
    (an inflated copy is never held: output past the header is counted and dropped) and return
    the first ``dicom.max_header_parse_bytes`` inflated bytes.

    Raises
    ------
    UnparseableDatasetError
        Past either cap (a deflate bomb), or not a deflate stream (0xC210).
    """
    import zlib

    fh.seek(0, os.SEEK_END)
    received = max(1, fh.tell() - offset)
    fh.seek(offset)
    cap = min(dicom_settings.max_inflated_bytes, int(received * dicom_settings.max_inflate_ratio))
    keep = dicom_settings.max_header_parse_bytes
    z = zlib.decompressobj(-zlib.MAX_WBITS)
    head = bytearray()
    total = 0
    try:
        while chunk := fh.read(1 << 16):
            while chunk:
                # Never more than 1 MiB of output per call, whatever the input claims.
                out = z.decompress(chunk, 1 << 20)
                chunk = z.unconsumed_tail
                total += len(out)
                if total > cap:
                    raise UnparseableDatasetError(
                        f"deflated data set inflates past {cap} bytes (dicom.max_inflate_ratio="
                        f"{dicom_settings.max_inflate_ratio:g}, dicom.max_inflated_bytes)")
                if len(head) < keep:
                    head += out[:keep - len(head)]
    except zlib.error as exc:
        raise UnparseableDatasetError(f"deflated data set is not a valid deflate stream: {exc}") from exc
    return bytes(head)
