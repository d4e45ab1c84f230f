"""Composition root: the running node (listener, HL7, scheduler jobs, worker, web).

``pgsam-node serve`` builds a :class:`Node` from the settings and runs it until SIGTERM/SIGINT;
the demo and the end-to-end tests run the same object in-process.
"""

from __future__ import annotations

import logging
import threading

from typing import TYPE_CHECKING

from pgsam_node.config import Settings
from pgsam_node.db import Database, open_database
from pgsam_node.flow.worker import WorkerLoop, make_worker_id, requeue_expired

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

    from pgsam_node.ingest.listener import Listener
    from pgsam_node.ingest.workers import AcceptorPool
    from pgsam_node.reports.hl7 import Hl7Listener
    from pgsam_node.web import WebServer

log = logging.getLogger(__name__)

#: Longest wait, at stop, for a model load still running in the background (seconds).
MODEL_LOAD_STOP_WAIT = 60.0


class Node:
    """Everything ``serve`` runs, with explicit start/stop.

    Parameters
    ----------
    worker
        Run the embedded worker (``worker.embedded``; the SQLite default needs it).
    predictor_factory
        Seam for tests: builds the predictor instead of loading ``model.path``.
    dicom_socket
        The DICOM port's listening socket, bound already (``serve`` binds it first, so that a
        PACS connecting during start-up waits in the kernel's queue instead of being refused);
        None: the listener binds ``dicom.bind``/``dicom.port`` itself.
    """

    def __init__(self, settings: Settings, db: Database | None = None, worker: bool | None = None, web: bool | None = None, predictor_factory=None,
                 dicom_socket=None):
        from pgsam_node.flow.pipeline import Pipeline
        from pgsam_node.flow.sequencer import Sequencer

        self.settings = settings
        self.db = db or open_database(settings)
        for d in (settings.spool_dir, settings.tmp_dir, settings.outputs_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.run_worker = settings.worker.embedded if worker is None else worker
        self.run_web = settings.web.enabled if web is None else web
        self.pipeline = Pipeline(self.db, settings, predictor_factory)
        self.sequencer = Sequencer(self.db, settings, self.pipeline)
        self.worker_id = make_worker_id()
        self.worker: WorkerLoop | None = None
        self.listener: Listener | AcceptorPool | None = None
        self.hl7: Hl7Listener | None = None
        self.web: WebServer | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.dicom_socket = dicom_socket
        self._stopped = threading.Event()
        self._start_lock = threading.Lock()
        self._loader: threading.Thread | None = None

    # ------------------------------------------------------------------------------- jobs
    def _jobs(self):
        """The scheduler jobs: the sequencer's table bound to this process (wakes the embedded worker)."""
        return self.sequencer.jobs(wake=lambda: self.worker.wake() if self.worker else None)

    def _trigger(self, job_id: str) -> None:
        """Run a scheduler job as soon as possible (e.g. a report just arrived over HL7)."""
        from pgsam_node.flow.scheduler import trigger_now

        if self.scheduler is not None:
            trigger_now(self.scheduler, job_id)

    # --------------------------------------------------------------------------- lifecycle
    def start(self) -> Node:
        from pgsam_node.deliver.outbox import recover_stuck
        from pgsam_node.ingest.listener import Listener
        from pgsam_node.flow.scheduler import build_scheduler

        from pgsam_node.ingest.index import reindex_spool
        from pgsam_node.ingest.journal import recover as recover_journal
        from pgsam_node.ingest.spool import StorageRootLock, clean_tmp

        s = self.settings
        # One node per storage root, decided before anything there is touched: a second serve
        # must fail here, not after deleting the live node's temporary files.
        self._root_lock = StorageRootLock(s.storage_root).acquire()
        # Temporary files are from transfers a crash interrupted: none was acknowledged.
        clean_tmp(s)
        # Acknowledged instances whose spool file did not reach the disk (power loss) come back
        # from the write-ahead journal, before the re-index gives them their rows.
        recover_journal(s)
        # Spool files without a row (crash between rename and commit) are indexed again.
        reindex_spool(self.db, s)
        if self.run_worker and self.db.is_sqlite:
            # SQLite = one worker: a lease left in the database is from a process that died.
            requeue_expired(self.db, s, owner_prefix="")
        recover_stuck(self.db)
        # The DICOM port opens first, right after recovery: a PACS can send within about a second
        # of start-up, even on a busy machine, while the heavy parts (the model with torch and
        # transformers, the web service) load behind it. Received instances only need the spool
        # and the index, which are up now.
        if s.dicom.acceptor_processes > 1:
            from pgsam_node.ingest.index import share_write_lock
            from pgsam_node.ingest.workers import AcceptorPool

            # Worker processes index their own instances: the SQLite writer lock that keeps the
            # assembly step and indexing apart must hold across processes (docs/ingest.md).
            if self.db.is_sqlite:
                share_write_lock(s)
            # The workers inherit the storage root's flock: no second node while any of them runs.
            self.listener = AcceptorPool(s, inherit_fds=(self._root_lock.fd,), sock=self.dicom_socket)
        else:
            self.listener = Listener(s, self.db, sock=self.dicom_socket)
        self.listener.start()
        log.info("DICOM port open: %s@%s:%s", s.dicom.ae_title, s.dicom.bind, self.listener.port)
        if s.hl7.port:
            from pgsam_node.reports.hl7 import Hl7Listener

            self.hl7 = Hl7Listener(s, self.db, on_report=lambda _result: self._trigger("reports"))
            self.hl7.start()
        self.scheduler = build_scheduler(self._jobs())
        self.scheduler.start()
        if self.run_worker:
            self.worker = WorkerLoop(self.db, s, self.sequencer.process, self.worker_id)
            # The worker claims studies only once the model is loaded: a study that becomes
            # READY earlier stays READY (visible, unclaimed) until then.
            self._loader = threading.Thread(target=self._load_model_then_work, name="model-loader", daemon=True)
            self._loader.start()
        if self.run_web:
            from pgsam_node.web import WebServer

            # An operator's retry/reprocess makes a study READY: wake the embedded worker.
            self.web = WebServer(s, self.db, on_action=lambda _res: self.worker.wake() if self.worker else None,
                                 model_status=self.model_status)
            self.web.start(announce=False)
        log.info(
            "node up: DICOM %s@%s:%s%s%s",
            s.dicom.ae_title,
            s.dicom.bind,
            self.listener.port,
            f", HL7 {s.hl7.bind}:{self.hl7.port}" if self.hl7 else "",
            f", web http://{s.web.bind}:{self.web.port}" if self.web else "",
        )
        if self.web is not None:
            from pgsam_node.web.server import announce_first_run_token

            # Start-up succeeded: only now is the first-run token created (or recovery printed).
            self.web.first_run_token = announce_first_run_token(self.db, s.storage_root)
        return self

    def model_status(self) -> dict:
        """The model's load state for ``/readyz`` (only this process's embedded worker)."""
        if not self.run_worker:
            return {"state": "no embedded worker"}
        return dict(self.pipeline.model_status)

    def _load_model_then_work(self) -> None:
        self.pipeline.preload()
        with self._start_lock:
            if not self._stopped.is_set() and self.worker is not None:
                self.worker.start()

    def wait_model(self, timeout: float | None = None) -> bool:
        """Block until the background model load has finished (tests, the demo); True when done."""
        if self._loader is None:
            return True
        self._loader.join(timeout)
        return not self._loader.is_alive()

    def stop(self) -> None:
        with self._start_lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
        for name, comp in (("scheduler", self.scheduler), ("worker", self.worker), ("listener", self.listener), ("hl7", self.hl7), ("web", self.web)):
            if comp is None:
                continue
            try:
                if name == "scheduler":
                    comp.shutdown(wait=True)
                else:
                    comp.stop()
            except Exception:  # noqa: BLE001 - keep stopping the rest
                log.exception("error stopping %s", name)
        if self._loader is not None and self._loader.is_alive():
            # Exiting while torch is still being imported or initialised in the loader thread
            # aborts the process from C++ (std::terminate on a joinable thread): let it finish.
            log.info("waiting up to %.0f s for the model load to finish before stopping", MODEL_LOAD_STOP_WAIT)
            self._loader.join(MODEL_LOAD_STOP_WAIT)
        self.db.dispose()
        if self.settings.dicom.acceptor_processes > 1 and self.db.is_sqlite:
            from pgsam_node.ingest.index import share_write_lock

            share_write_lock(self.settings, on=False)
        if getattr(self, "_root_lock", None) is not None:
            self._root_lock.release()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
