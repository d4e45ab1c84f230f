"""Report-path throughput: parse_report and HL7 intake, each as a ratio to an anchor of the same run.

* parse_report: reports parsed per second, against the anchor of one ``str.lower()`` plus one
  ``re.findall(r"\\w+")`` over the same texts (a "read every character once" floor).
* HL7: ORU^R01 messages acknowledged per second on one MLLP connection (parse, store in SQLite
  with fsync, ACK), against the anchor of the same number of round trips to a plain TCP echo
  server on localhost.

Run: ``python benchmarks/reports_bench.py [--messages 200]``. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgsam_node.config import load_settings  # noqa: E402
from pgsam_node.db import Database  # noqa: E402
from pgsam_node.reports.hl7 import Hl7Listener, mllp_frame, read_frame  # noqa: E402
from pgsam_node.reports.parse import parse_report  # noqa: E402
from tests.hl7_messages import oru  # noqa: E402
from tests.unit.test_report_parse import CASES  # noqa: E402


def bench_parse(rounds: int) -> None:
    texts = [t for _, t, _ in CASES if t]
    t0 = time.perf_counter()
    for _ in range(rounds):
        for t in texts:
            re.findall(r"\w+", t.lower())
    anchor = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(rounds):
        for t in texts:
            parse_report(t)
    took = time.perf_counter() - t0
    n = rounds * len(texts)
    print(f"parse_report: {n / took:,.0f} reports/s ({took / n * 1000:.2f} ms each); ratio to anchor {took / anchor:.1f}x")


def _echo_server() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            buf = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while b"\x1c\x0d" in buf:
                    frame, buf = buf.split(b"\x1c\x0d", 1)
                    conn.sendall(b"\x0bMSA|AA\x1c\x0d")

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def bench_hl7(messages: int) -> None:
    frames = [mllp_frame(oru(control=f"B{i}", accession=f"ACC{i}", lines=(f"Report {i}: left parotid 2 cm mass.",))) for i in range(messages)]
    srv, port = _echo_server()
    with socket.create_connection(("127.0.0.1", port)) as c:
        t0 = time.perf_counter()
        for f in frames:
            c.sendall(f)
            read_frame(c)
        anchor = time.perf_counter() - t0
    srv.close()
    with tempfile.TemporaryDirectory() as tmp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free = s.getsockname()[1]
        settings = load_settings(None, storage={"root": tmp}, hl7={"port": free}, logging={"level": "WARNING"})
        db = Database(settings.database_url)
        with Hl7Listener(settings, db) as lst, socket.create_connection(("127.0.0.1", lst.port)) as c:
            t0 = time.perf_counter()
            for f in frames:
                c.sendall(f)
                read_frame(c)
            took = time.perf_counter() - t0
        db.dispose()
    print(f"HL7 intake: {messages / took:,.0f} messages/s ({took / messages * 1000:.2f} ms each, SQLite, fsync); "
          f"ratio to TCP echo anchor {took / anchor:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    bench_parse(args.rounds)
    bench_hl7(args.messages)


if __name__ == "__main__":
    main()
