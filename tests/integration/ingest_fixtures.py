"""Fixtures for ingest tests: an in-process listener on a free port."""

from __future__ import annotations

import contextlib

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES
from pynetdicom.sop_class import MRImageStorage, Verification

from pgsam_node.db import Database
from pgsam_node.ingest.listener import Listener


@contextlib.contextmanager
def running_listener(settings, db_url: str | None = None):
    """Start a Listener for ``settings``; yields (listener, db); stops and disposes after."""
    db = Database(db_url or settings.database_url)
    listener = Listener(settings, db)
    listener.start()
    try:
        yield listener, db
    finally:
        listener.stop()
        db.dispose()


def scu(aet: str = "TESTSCU", contexts=((MRImageStorage, ALL_TRANSFER_SYNTAXES[:3]),)) -> AE:
    """A pynetdicom SCU proposing Verification plus ``contexts``."""
    ae = AE(ae_title=aet)
    ae.add_requested_context(Verification)
    for sop, ts in contexts:
        ae.add_requested_context(sop, ts)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    return ae
