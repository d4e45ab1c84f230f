"""``pgsam-node worker``: a worker alone, for GPU machines sharing a PostgreSQL queue.

It claims READY studies (``SELECT … FOR UPDATE SKIP LOCKED``), runs PG-SAM with the model kept
loaded between studies, writes outputs to the shared storage root and queues them in the outbox;
the node running ``serve`` (listener, scheduler, outbox) delivers them.
"""

from __future__ import annotations

import logging
import signal
import threading

from pgsam_node.commands import add_config_arg
from pgsam_node.commands import load

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("worker", help="run a worker against a shared (PostgreSQL) database")
    add_config_arg(p)
    p.add_argument("--once", action="store_true", help="process the queue until empty, then exit")
    p.set_defaults(func=run)


def run(args) -> int:
    from pgsam_node.db import open_database
    from pgsam_node.flow.pipeline import Pipeline
    from pgsam_node.flow.sequencer import Sequencer
    from pgsam_node.flow.worker import WorkerLoop, requeue_expired

    settings = load(args)
    db = open_database(settings)
    if db.is_sqlite:
        log.warning("worker on SQLite: run only one worker (use PostgreSQL for several)")
    pipeline = Pipeline(db, settings)
    sequencer = Sequencer(db, settings, pipeline)
    loop = WorkerLoop(db, settings, sequencer.process)
    log.info("worker %s starting", loop.worker_id)
    if args.once:
        while loop.run_once():
            pass
        db.dispose()
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    _ = pipeline.predictor  # load the model before claiming anything
    loop.start()
    while not stop.wait(settings.worker.heartbeat_seconds):
        requeue_expired(db, settings)
    loop.stop()
    db.dispose()
    return 0
