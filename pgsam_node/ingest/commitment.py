"""Storage Commitment Push Model results (PS3.4 J.3.3): the N-EVENT-REPORT a PACS sends back after
our N-ACTION request, on an association it opens to the node's own DICOM listener.

The listener accepts the Storage Commitment Push Model context (:data:`COMMITMENT_SOP_CLASS`, the
PACS taking the SCP role through role selection) and hands each report to
:func:`record_commitment_report`. A report marks the outbox rows of the listed instances
``committed`` True (ReferencedSOPSequence) or False (FailedSOPSequence) for the destination whose
AE title sent it.
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pynetdicom.sop_class import StorageCommitmentPushModel
from sqlalchemy import update

from pgsam_node.config import Settings
from pgsam_node.db.models import OutboxItem
from pgsam_node.db.session import Database

log = logging.getLogger(__name__)

COMMITMENT_SOP_CLASS = str(StorageCommitmentPushModel)


def record_commitment_report(db: Database, settings: Settings, calling_ae: str, sop_class_uid: str,
                             info: Dataset) -> int:
    """Record one N-EVENT-REPORT's Event Information.

    Returns
    -------
    int
        The N-EVENT-REPORT status: 0x0000 when recorded, 0x0110 processing failure when the
        database cannot be written (the PACS may retry), 0x0112 (no such SOP instance) for another
        SOP class.
    """
    if sop_class_uid != COMMITMENT_SOP_CLASS:
        return 0x0112
    aet_to_dest = {d.ae_title: d.name for d in settings.destinations}
    calling = (calling_ae or "").strip()
    dest = aet_to_dest.get(calling)
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
        return 0x0110
    level = logging.INFO if not failed else logging.ERROR
    log.log(level, "storage commitment report from %s: %d committed, %d failed", calling, len(ok), len(failed))
    return 0x0000
