"""C-STORE SCU to the configured destinations, with every outcome classified as success, warning
(stored), transient failure (retry later) or permanent failure (dead letter).

Status classes follow PS3.4 B.2.3 (Storage Service Class statuses) and PS3.7 C (status
encoding); association outcomes follow PS3.8 7.1.1.9 (A-ASSOCIATE-RJ result/source/reason).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.sop_class import StorageCommitmentPushModel

from pgsam_node.config import Destination, Settings
from pgsam_node.errors import SendError
from pgsam_node.logsetup import uid_hash
from pgsam_node.tls import client_context

log = logging.getLogger(__name__)

#: Well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5).
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
#: Warning statuses meaning "stored" (PS3.4 B.2.3: coercion, elements discarded, not validated).
STORED_WARNINGS = {0xB000, 0xB006, 0xB007}


@dataclass
class StoreOutcome:
    """Result of one C-STORE.

    ``ok`` = stored (success or a storage warning); otherwise ``permanent`` tells whether a retry
    can help.
    """

    ok: bool
    status: int | None = None
    permanent: bool = False
    error: str | None = None
    warning: str | None = None
    commitment_requested: bool = False


@dataclass
class _Item:
    path: Path
    ds: Dataset | None = None
    outcome: StoreOutcome | None = field(default=None)


def classify_status(status: int) -> StoreOutcome:
    """Map a C-STORE response status to an outcome (PS3.4 B.2.3, PS3.7 C)."""
    if status == 0x0000:
        return StoreOutcome(ok=True, status=status)
    if status in STORED_WARNINGS or 0xB000 <= status <= 0xBFFF:
        return StoreOutcome(ok=True, status=status, warning=f"stored with warning 0x{status:04X}")
    if 0xA700 <= status <= 0xA7FF:
        return StoreOutcome(ok=False, status=status, error=f"out of resources (0x{status:04X})")
    if 0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF:
        return StoreOutcome(ok=False, status=status, permanent=True, error=f"dataset refused (0x{status:04X})")
    if status in (0x0122, 0x0124, 0x0211, 0x0212):
        # SOP class not supported / not authorised / unrecognised operation: no retry can help.
        return StoreOutcome(ok=False, status=status, permanent=True, error=f"refused (0x{status:04X})")
    # 0x0110 processing failure and anything unknown: transient, bounded by send.max_attempts.
    return StoreOutcome(ok=False, status=status, error=f"failed (0x{status:04X})")


def _rejection(result: int | None, source: int | None, diag: int | None) -> SendError:
    """A-ASSOCIATE-RJ result, source and reason → SendError (PS3.8 Table 9-21)."""
    text = f"association rejected (result {result}, source {source}, reason {diag})"
    if source == 1 and diag in (3, 7):
        who = "our calling AE title" if diag == 3 else "the called AE title"
        return SendError(f"{text}: {who} is not recognised by the destination", permanent=True)
    if source == 1 and diag == 2:
        return SendError(f"{text}: application context not supported", permanent=True)
    if result == 1:
        return SendError(f"{text}: rejected permanently", permanent=True)
    return SendError(f"{text}: rejected transiently", permanent=False)


def client_ae(settings: Settings) -> AE:
    """Our calling AE (``dicom.ae_title``) with every timeout set to ``send.timeout_seconds``."""
    ae = AE(ae_title=settings.dicom.ae_title)
    t = settings.send.timeout_seconds
    ae.acse_timeout = t
    ae.dimse_timeout = t
    ae.network_timeout = t
    ae.connection_timeout = t
    return ae


def open_association(settings: Settings, dest: Destination, ae: AE):
    """Associate with ``dest`` (TLS when ``dest.tls``); a rejection raises :class:`SendError`
    (PS3.8 7.1.1.9), anything else returns the association (the caller checks it is established)."""
    tls_args = (client_context(settings.dicom.tls), dest.host) if dest.tls else None
    seen: list[A_ASSOCIATE_RJ] = []

    def _pdu_received(event) -> None:
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            seen.append(event.pdu)

    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args,
                             evt_handlers=[(evt.EVT_PDU_RECV, _pdu_received)])
    except Exception as exc:  # socket errors surface as exceptions on some paths
        raise SendError(f"cannot connect to {dest.name}: {exc}") from exc
    if assoc.is_rejected:
        prim = assoc.acceptor.primitive
        raise _rejection(getattr(prim, "result", None), getattr(prim, "result_source", None),
                         getattr(prim, "diagnostic", None))
    if seen and not assoc.is_established:
        # pynetdicom 3.0 race: when the peer rejects and closes before the requesting thread looks
        # at the socket, the association reports an abort although the A-ASSOCIATE-RJ PDU arrived
        # (seen under CPU load against Orthanc). The PDU itself carries the answer.
        rj = seen[0]
        raise _rejection(rj.result, rj.source, rj.reason_diagnostic)
    return assoc


def send_files(settings: Settings, dest: Destination, paths: Sequence[Path]) -> list[StoreOutcome]:
    """Send DICOM files to one destination over one association.

    Parameters
    ----------
    settings
        Node settings (calling AE ``dicom.ae_title``, TLS ``dicom.tls``, ``send.timeout_seconds``).
    dest
        The destination (called AE, host, port, TLS, storage commitment).
    paths
        Part-10 files to send.

    Returns
    -------
    list of StoreOutcome
        One per path, in order.

    Raises
    ------
    SendError
        The association could not be used at all: ``permanent`` for a rejection of our/their AE
        title or when no presentation context was accepted, transient for connection refused,
        timeouts, aborts and transient rejections.
    """
    items = [_Item(Path(p)) for p in paths]
    for it in items:
        try:
            it.ds = pydicom.dcmread(it.path)
        except Exception as exc:  # missing or corrupt output: retrying cannot help
            it.outcome = StoreOutcome(ok=False, permanent=True, error=f"cannot read {it.path.name}: {exc}")
    todo = [it for it in items if it.ds is not None]
    if not todo:
        return [it.outcome for it in items]  # type: ignore[misc]
    ae = client_ae(settings)
    sop_classes = sorted({str(it.ds.SOPClassUID) for it in todo})
    for uid in sop_classes:
        # Explicit VR LE first (what we write), Implicit VR LE as the universal fallback (PS3.5 10.1).
        ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    if dest.storage_commitment:
        ae.add_requested_context(StorageCommitmentPushModel)
    assoc = open_association(settings, dest, ae)
    if not assoc.is_established:
        accepted = assoc.accepted_contexts
        rejected = assoc.rejected_contexts
        if assoc.acceptor.primitive is not None and not accepted and rejected:
            raise SendError(f"{dest.name} accepted none of the presentation contexts {sop_classes}", permanent=True)
        raise SendError(f"cannot associate with {dest.name} ({dest.host}:{dest.port}): connection failed, timed out or aborted")
    stored: list[_Item] = []
    try:
        accepted_classes = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        for it in todo:
            sop_class = str(it.ds.SOPClassUID)
            if sop_class not in accepted_classes:
                it.outcome = StoreOutcome(ok=False, permanent=True,
                                          error=f"{dest.name} does not accept SOP class {sop_class}")
                continue
            if not assoc.is_established:
                it.outcome = StoreOutcome(ok=False, error="association lost before sending")
                continue
            status = assoc.send_c_store(it.ds)
            if not status or "Status" not in status:
                # No response: DIMSE timeout or abort (PS3.7 9.1.1): transient.
                it.outcome = StoreOutcome(ok=False, error="no C-STORE response (timeout or abort)")
                continue
            it.outcome = classify_status(int(status.Status))
            if it.outcome.ok:
                stored.append(it)
            log.log(logging.INFO if it.outcome.ok else logging.WARNING, "C-STORE to %s: %s", dest.name,
                    it.outcome.warning or it.outcome.error or "success",
                    extra={"sop": uid_hash(str(it.ds.SOPInstanceUID)), "status": f"0x{int(status.Status):04X}"})
        if dest.storage_commitment and stored and assoc.is_established:
            _request_commitment(assoc, dest, stored)
    finally:
        if assoc.is_established:
            assoc.release()
    return [it.outcome for it in items]  # type: ignore[misc]


def _request_commitment(assoc, dest: Destination, stored: list[_Item]) -> None:
    """N-ACTION Storage Commitment request (PS3.4 J.3.2) for the stored instances.

    The N-EVENT-REPORT with the result comes later on an association the PACS opens to our SCP;
    this node records only that commitment was requested (``commitment_requested``).
    """
    if not any(str(cx.abstract_syntax) == StorageCommitmentPushModel for cx in assoc.accepted_contexts):
        log.warning("destination %s did not accept Storage Commitment; not requested", dest.name)
        return
    req = Dataset()
    req.TransactionUID = generate_uid()
    refs = []
    for it in stored:
        r = Dataset()
        r.ReferencedSOPClassUID = it.ds.SOPClassUID
        r.ReferencedSOPInstanceUID = it.ds.SOPInstanceUID
        refs.append(r)
    req.ReferencedSOPSequence = refs
    status, _ = assoc.send_n_action(req, 1, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
    code = int(status.Status) if status and "Status" in status else None
    if code == 0x0000:
        for it in stored:
            it.outcome.commitment_requested = True  # type: ignore[union-attr]
        log.info("storage commitment requested from %s for %d instance(s)", dest.name, len(stored),
                 extra={"transaction": uid_hash(req.TransactionUID)})
    else:
        log.warning("storage commitment request to %s failed (status %s)", dest.name,
                    f"0x{code:04X}" if code is not None else "none")
