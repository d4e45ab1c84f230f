"""``pgsam-node serve``: the DICOM listener plus the scheduler, until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading

from ..cli import add_config_arg
from . import load

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the node: DICOM listener and background jobs")
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..db import open_database
    from ..index import reindex_spool
    from ..receive import Listener
    from ..scheduler import build_scheduler
    from ..spool import clean_tmp

    settings = load(args)
    stop = threading.Event()

    def _on_signal(signum, _frame):
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    db = open_database(settings)
    listener = scheduler = None
    try:
        # Temporary files are from transfers a crash interrupted: none was acknowledged.
        clean_tmp(settings)
        reindex_spool(db, settings)
        listener = Listener(settings, db)
        listener.start()
        scheduler = build_scheduler(settings, db)
        scheduler.start()
        log.info("node serving: DICOM %s@%s:%d, storage %s", settings.dicom.ae_title, settings.dicom.bind,
                 listener.port, settings.storage_root)
        while not stop.wait(1.0):
            pass
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=True)
        if listener is not None:
            listener.stop()
        db.dispose()
        log.info("node stopped")
    return 0
