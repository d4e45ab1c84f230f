"""``pgsam-node serve``: the whole node (DICOM listener, HL7 listener when configured, scheduler
jobs, the embedded worker, web dashboard/API) until SIGTERM/SIGINT."""

from __future__ import annotations

import errno
import logging
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


def run(args) -> int:
    from pgsam_node.node import Node

    settings = load(args)
    stop = threading.Event()

    def _on_signal(signum, _frame):
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    node = Node(settings, worker=False if args.no_worker else None, web=False if args.no_web else None)
    try:
        try:
            node.start()
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                raise
            d = settings.dicom
            what = {errno.EADDRINUSE: "is already in use (another pgsam-node, storescp or Orthanc?)",
                    errno.EACCES: "needs privileges (ports below 1024: CAP_NET_BIND_SERVICE)",
                    errno.EADDRNOTAVAIL: "is not an address of this machine"}[exc.errno]
            raise ReceiveError(f"cannot open the DICOM port {d.bind}:{d.port}: it {what}; "
                               f"change dicom.port / dicom.bind or stop the other process") from None
        log.info("node serving: DICOM %s@%s:%d, storage %s", settings.dicom.ae_title, settings.dicom.bind,
                 node.listener.port, settings.storage_root)
        while not stop.wait(1.0):
            pass
    finally:
        node.stop()
        log.info("node stopped")
    return 0
