"""``pgsam-node web``: run only the dashboard/API/metrics service (``serve`` runs it too).

Useful on a machine separate from the listener (shared PostgreSQL and storage), or to look at a
node's database. Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import signal
import threading

from pgsam_node.commands import add_config_arg
from pgsam_node.db import open_database
from pgsam_node.commands import load


def register(sub) -> None:
    p = sub.add_parser("web", help="run the dashboard/API/metrics service alone")
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pgsam_node.web import WebServer

    settings = load(args)
    db = open_database(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = WebServer(settings, db)
    server.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
        db.dispose()
    return 0
