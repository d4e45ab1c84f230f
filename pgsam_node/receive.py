"""DICOM listener: Verification and Storage SCP (PS3.4 Annex A and B) on pynetdicom.

Association policy (checked when the A-ASSOCIATE-RQ arrives, PS3.8 7.1.1.9):

* calling AE title not on ``dicom.allowed_calling_aets`` (entries ``AET`` or ``AET@host``; empty =
  everyone) -> A-ASSOCIATE-RJ permanent, service-user, "calling AE title not recognised";
* free disk below ``dicom.refuse_below_free_bytes`` -> A-ASSOCIATE-RJ transient,
  service-provider (presentation), "temporary congestion", so the PACS retries later;
* more than ``dicom.max_associations`` at once -> transient "local limit exceeded" (pynetdicom).

C-STORE (PS3.4 B.2.3): the received bytes are parsed for their header only, written to the spool
as a Part-10 file in the accepted transfer syntax, fsynced, renamed into place and indexed; only
then does the success status go back (persist before acknowledge). Failures become statuses:
0xA700 out of resources (disk below the reserve or full, database unavailable), 0xC210 cannot
understand (unparseable, no UIDs). The listener keeps serving after any of them.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from io import BytesIO

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from . import spool
from .errors import ReceiveError, StorageFullError, UnparseableDatasetError
from .index import index_instance, parse_header
from .logsetup import uid_hash
from .tls import server_context

log = logging.getLogger(__name__)

# PS3.4 Annex B.2.3 C-STORE status codes.
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_PROCESSING_FAILURE = 0x0110


def _parse_allow_entry(entry: str) -> tuple[str, str | None]:
    aet, _, host = entry.partition("@")
    return aet.strip(), (host.strip() or None)


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
    aet = (calling_aet or "").strip()
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
    """

    def __init__(self, settings, db, on_release: Callable[[set[str]], None] | None = None):
        self.settings = settings
        self.db = db
        self.on_release = on_release
        self._server = None
        self._lock = threading.Lock()
        #: Counters since start (for status/metrics): stored, failed, rejected associations.
        self.counters = {"stored": 0, "failed": 0, "rejected": 0}
        self._assoc_studies: dict[int, set[str]] = {}

    # ---- lifecycle ---------------------------------------------------------------------------
    def _build_ae(self) -> AE:
        d = self.settings.dicom
        ae = AE(ae_title=d.ae_title)
        # Every standard storage SOP class (MR, Enhanced MR, SC, SEG, SR, RT ...) in every transfer
        # syntax pydicom knows, incl. deflate, JPEG baseline/lossless, JPEG-LS, JPEG 2000 and RLE:
        # the bytes are stored as received, so no codec is needed to accept them.
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES[:4])
        ae.maximum_associations = d.max_associations
        ae.network_timeout = d.network_timeout
        ae.acse_timeout = d.network_timeout
        ae.dimse_timeout = d.network_timeout
        ae.maximum_pdu_size = 0  # unlimited receive PDU: fewer, larger P-DATA reads
        return ae

    def start(self) -> None:
        """Bind and serve in background threads (returns immediately)."""
        if self._server is not None:
            return
        d = self.settings.dicom
        self.settings.spool_dir.mkdir(parents=True, exist_ok=True)
        self.settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        ae = self._build_ae()
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_end),
            (evt.EVT_ABORTED, self._on_end),
        ]
        ssl_ctx = server_context(d.tls)
        self._ae = ae
        self._server = ae.start_server((d.bind, d.port), block=False, evt_handlers=handlers, ssl_context=ssl_ctx)
        log.info("DICOM listener %s on %s:%d%s", d.ae_title, d.bind, self.port, " (TLS)" if ssl_ctx else "")

    def stop(self) -> None:
        """Stop accepting, end open associations, release the port."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server = None
        log.info("DICOM listener stopped")

    @property
    def port(self) -> int:
        """The bound TCP port (useful with ``dicom.port: 0``)."""
        if self._server is None:
            return self.settings.dicom.port
        return self._server.server_address[1]

    # ---- association policy ------------------------------------------------------------------
    def _on_conn_open(self, event) -> None:
        # Small C-STORE-RSP PDUs must not wait for Nagle's algorithm (a delayed ACK costs ~40 ms
        # per instance on Linux).
        try:
            sock = event.assoc.dul.socket.socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (AttributeError, OSError):
            pass

    def _on_requested(self, event) -> None:
        assoc = event.assoc
        d = self.settings.dicom
        calling = (assoc.requestor.primitive.calling_ae_title or "").strip()
        host = assoc.requestor.address
        if not calling_ae_allowed(d.allowed_calling_aets, calling, host):
            log.warning("association from %s@%s rejected: calling AE title not allowed", calling, host)
            self._reject(assoc, 0x01, 0x01, 0x03)  # permanent, service-user, calling AE not recognised
            return
        if d.refuse_below_free_bytes:
            free = spool.free_bytes(self.settings.storage_root)
            if free < d.refuse_below_free_bytes:
                log.warning("association from %s@%s rejected: %d bytes free, below dicom.refuse_below_free_bytes",
                            calling, host, free)
                self._reject(assoc, 0x02, 0x03, 0x01)  # transient, presentation, temporary congestion
                return
        self._prefer_requestor_order(assoc)

    @staticmethod
    def _prefer_requestor_order(assoc) -> None:
        """Accept, per presentation context, the first transfer syntax the *peer* lists that we
        support (PS3.8 7.1.1.13 leaves the choice to the acceptor; pynetdicom would take ours).

        So a JPEG file offered as [JPEG, Explicit VR LE] is received and kept compressed, byte
        for byte, instead of making the sender decompress it; and an uncompressed file offered
        as [Explicit VR LE, JPEG lossy] is never pushed into lossy compression.
        """
        wanted: dict[str, list[str]] = {}
        for cx in assoc.requestor.primitive.presentation_context_definition_list:
            order = wanted.setdefault(str(cx.abstract_syntax), [])
            order.extend(str(t) for t in cx.transfer_syntax if str(t) not in order)
        contexts = assoc.acceptor.supported_contexts
        for cx in contexts:
            order = wanted.get(str(cx.abstract_syntax))
            if order:
                rank = {t: i for i, t in enumerate(order)}
                cx.transfer_syntax = sorted(cx.transfer_syntax, key=lambda t: rank.get(str(t), len(rank)))
        assoc.acceptor.supported_contexts = contexts

    def _reject(self, assoc, result: int, source: int, diagnostic: int) -> None:
        with self._lock:
            self.counters["rejected"] += 1
        assoc.acse.send_reject(result, source, diagnostic)
        # As pynetdicom's own ACSE rejection does: wait until the A-ASSOCIATE-RJ is out and the
        # state machine is idle (Sta1) before the server closes the socket.
        assoc.kill()

    # ---- services ------------------------------------------------------------------------------
    def _on_echo(self, event) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event) -> int:
        """Persist, index, then acknowledge one instance (PS3.4 B.2.3 statuses)."""
        req = event.request
        sop_hash = uid_hash(str(req.AffectedSOPInstanceUID or ""))
        calling = (event.assoc.requestor.ae_title or "").strip() or None
        try:
            ts_uid = str(event.context.transfer_syntax)
            data: bytes = req.DataSet.getvalue()
            sop_class = str(req.AffectedSOPClassUID or "")
            # Header first, from meta + dataset bytes: fails fast on garbage, no pixel decoding.
            meta_guess = spool.file_meta_bytes(sop_class, str(req.AffectedSOPInstanceUID or "1"), ts_uid)
            stream = BytesIO(meta_guess + data)
            h = parse_header(stream, sop_class)
            meta = spool.file_meta_bytes(h.sop_class_uid, h.sop_uid, ts_uid, calling)
            rel = spool.spool_relpath(h.study_uid, h.series_uid, h.sop_uid)
            stored = spool.write_instance(self.settings, rel, (meta, data))
            res = index_instance(self.db, self.settings, h, rel, stored.size, ts_uid, calling)
        except StorageFullError as exc:
            log.error("instance %s refused (0xA700): %s", sop_hash, exc)
            return self._fail(STATUS_OUT_OF_RESOURCES)
        except UnparseableDatasetError as exc:
            log.error("instance %s refused (0xC210): %s", sop_hash, exc)
            return self._fail(STATUS_CANNOT_UNDERSTAND)
        except ReceiveError as exc:
            log.error("instance %s refused (0xA700): %s", sop_hash, exc)
            return self._fail(STATUS_OUT_OF_RESOURCES)
        except Exception as exc:  # noqa: BLE001 - e.g. the database is down: tell the peer to retry
            log.exception("instance %s refused (0xA700): %s: %s", sop_hash, type(exc).__name__, exc)
            return self._fail(STATUS_OUT_OF_RESOURCES)
        with self._lock:
            self.counters["stored"] += 1
            self._assoc_studies.setdefault(id(event.assoc), set()).add(h.study_uid)
        log.debug("stored instance %s (series %s, study %s)%s", sop_hash, uid_hash(h.series_uid),
                  uid_hash(h.study_uid), " replaced" if res.replaced else "")
        return STATUS_SUCCESS

    def _fail(self, status: int) -> int:
        with self._lock:
            self.counters["failed"] += 1
        return status

    def _on_end(self, event) -> None:
        with self._lock:
            studies = self._assoc_studies.pop(id(event.assoc), None)
        if studies and self.on_release is not None:
            try:
                self.on_release(studies)
            except Exception:  # noqa: BLE001 - a hint must never break the listener
                log.exception("association-release hook failed")
