"""Storage Commitment Push Model results (PS3.4 J.3.3): the N-EVENT-REPORT a PACS sends back after
our N-ACTION request, on an association it opens to the node's own DICOM listener.

:func:`commitment_report_handler` is the ``EVT_N_EVENT_REPORT`` handler the receive SCP binds,
and :func:`add_commitment_context` adds the presentation context it must accept. A report marks
the outbox rows of the listed instances ``committed`` True (ReferencedSOPSequence) or False
(FailedSOPSequence) for the destination whose AE title sent it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydicom.dataset import Dataset
from pynetdicom.sop_class import StorageCommitmentPushModel
from sqlalchemy import update

from .config import Settings
from .db.models import OutboxItem
from .db.session import Database

log = logging.getLogger(__name__)


def add_commitment_context(ae) -> None:
    """Accept Storage Commitment with the PACS in the SCP role (PS3.4 J.3.3: the report travels on
    an association the PACS opens, proposing itself as SCP through role selection)."""
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)


def commitment_report_handler(db: Database, settings: Settings) -> Callable:
    """Build the ``EVT_N_EVENT_REPORT`` handler recording commitment results.

    Returns
    -------
    callable
        ``handler(event) -> (status, None)``; 0x0000 when recorded, 0x0110 processing failure
        when the database cannot be written (the PACS may retry), 0x0112 (no such SOP instance)
        for another SOP class.
    """
    aet_to_dest = {d.ae_title: d.name for d in settings.destinations}

    def handle(event) -> tuple[int, Dataset | None]:
        req = event.request
        if str(req.AffectedSOPClassUID) != StorageCommitmentPushModel:
            return 0x0112, None
        info = event.event_information
        calling = event.assoc.requestor.ae_title
        calling = calling.decode() if isinstance(calling, bytes) else str(calling)
        dest = aet_to_dest.get(calling.strip())
        ok = [str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", [])]
        failed = [str(i.ReferencedSOPInstanceUID) for i in info.get("FailedSOPSequence", [])]
        try:
            with db.transaction() as s:
                for uids, value in ((ok, True), (failed, False)):
                    if not uids:
                        continue
                    q = update(OutboxItem).where(OutboxItem.sop_instance_uid.in_(uids))
                    if dest is not None:
                        q = q.where(OutboxItem.destination == dest)
                    s.execute(q.values(committed=value))
        except Exception:
            log.exception("cannot record a storage commitment report")
            return 0x0110, None
        level = logging.INFO if not failed else logging.ERROR
        log.log(level, "storage commitment report from %s: %d committed, %d failed", calling, len(ok), len(failed))
        return 0x0000, None

    return handle
