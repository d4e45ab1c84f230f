"""``pgsam-node serve``: the whole node (DICOM listener, HL7 listener when configured, scheduler
jobs, the embedded worker, web dashboard/API) until SIGTERM/SIGINT."""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading

from pgsam_node.commands import add_config_arg
from pgsam_node.commands import load
from pgsam_node.errors import ReceiveError

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the node: DICOM listener, jobs, worker, web")
    add_config_arg(p)
    p.add_argument("--no-worker", action="store_true", help="no embedded worker (GPU workers run `pgsam-node worker`)")
    p.add_argument("--no-web", action="store_true", help="no web dashboard/API")
    p.set_defaults(func=run)


def _port_error(settings, exc: OSError) -> ReceiveError | None:
    """The clear message for a DICOM port that cannot be bound, or None for another error."""
    if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
        return None
    d = settings.dicom
    what = {errno.EADDRINUSE: "is already in use (another pgsam-node, storescp or Orthanc?)",
            errno.EACCES: "needs privileges (ports below 1024: CAP_NET_BIND_SERVICE)",
            errno.EADDRNOTAVAIL: "is not an address of this machine"}[exc.errno]
    return ReceiveError(f"cannot open the DICOM port {d.bind}:{d.port}: it {what}; "
                        f"change dicom.port / dicom.bind or stop the other process")


def bind_dicom_port(settings):
    """Bind and listen on the DICOM port now, before the database, recovery and the rest of the
    node load (issue 17: the port must accept within 2 s of ``serve``, even on a busy machine;
    used with ``dicom.acceptor_processes`` > 1).
    A PACS that connects during start-up waits in the kernel's accept queue (``backlog`` 128) and
    is answered once the acceptor runs, instead of being refused and retrying minutes later."""
    import socket

    d = settings.dicom
    try:
        return socket.create_server((d.bind, d.port), backlog=128)
    except OSError as exc:
        err = _port_error(settings, exc)
        if err is None:
            raise
        raise err from None


def run(args) -> int:
    settings = load(args)
    # With acceptor worker processes the first association is answered only once a worker has
    # imported its libraries; the port accepts from here on, and connections wait in the queue.
    # With one process (the default) the port opens as before: right after recovery, so that an
    # open port still means a started node.
    sock = None
    if settings.dicom.acceptor_processes > 1:
        from pgsam_node.prebind import take

        # Bound by `python -m pgsam_node` before the imports if the settings agree; else here.
        sock = take(settings.dicom.bind, settings.dicom.port) or bind_dicom_port(settings)
    else:
        from pgsam_node.prebind import take

        early = take(settings.dicom.bind, settings.dicom.port)  # the file said N > 1, the settings do not
        if early is not None:
            early.close()
    from pgsam_node.node import Node

    stop = threading.Event()

    def _on_signal(signum, _frame):
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        node = Node(settings, worker=False if args.no_worker else None, web=False if args.no_web else None,
                    dicom_socket=sock)
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    try:
        try:
            node.start()
        except OSError as exc:
            err = _port_error(settings, exc)
            if err is None:
                raise
            raise err from None
        log.info("node serving: DICOM %s@%s:%d, storage %s", settings.dicom.ae_title, settings.dicom.bind,
                 node.listener.port, settings.storage_root)
        while not stop.wait(1.0):
            pass
    finally:
        node.stop()
        if sock is not None:
            sock.close()  # closed by the listener already, unless start-up failed before it
        log.info("node stopped")
    if not node.wait_model(0):
        # The model is still loading after the wait in Node.stop: leave without the interpreter's
        # teardown, which would abort in torch's C++ threads; everything durable is already closed.
        log.warning("model load still running at exit: leaving without interpreter teardown")
        logging.shutdown()
        os._exit(0)
    return 0
