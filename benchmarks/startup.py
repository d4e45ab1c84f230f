#!/usr/bin/env python3
"""Start-up: from ``pgsam-node serve`` to the DICOM port accepting, to the first C-ECHO answered,
and to the model loaded (``/readyz`` ``checks.model.state == "loaded"``).

Anchor, measured in the same run: DCMTK ``storescp`` from spawn to its first C-ECHO answered.
Each round starts a fresh node on a fresh storage root (embedded default: SQLite, local storage,
bundled model, web on). ``--load K`` repeats the measurement with K busy processes on the CPU, as
on a node whose machine is busy (the issue's case: over a minute before the port answered when
torch and transformers loaded before the port opened).

Prints medians over ``--rounds`` and the ratio storescp / node for the first echo (1.0 = as fast
as storescp; start-up is a latency, so higher is better for the node).

``--processes P [P ...]`` measures the node with ``dicom.acceptor_processes: P`` too (the port is
bound by ``serve`` before anything else; the first echo waits for the first acceptor worker).

Usage: python benchmarks/startup.py [--rounds 5] [--load 0 4] [--processes 1 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ECHOSCU = "/usr/bin/echoscu"
STORESCP = "/usr/bin/storescp"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def echo_ok(port: int, aet: str) -> bool:
    r = subprocess.run([ECHOSCU, "-to", "2", "-aec", aet, "127.0.0.1", str(port)], capture_output=True)
    return r.returncode == 0


def model_loaded(web_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/readyz", timeout=1) as r:
            body = json.loads(r.read())
    except Exception:  # noqa: BLE001 - 503 or not yet listening: not loaded
        return False
    return body.get("checks", {}).get("model", {}).get("state") == "loaded"


def until(pred, t0: float, timeout: float) -> float:
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.01)
    raise RuntimeError("timed out")


def node_round(tmp: Path, timeout: float, processes: int = 1) -> dict:
    port, web = free_port(), free_port()
    cfg = tmp / "node.yaml"
    cfg.write_text(json.dumps({
        "dicom": {"port": port, "refuse_below_free_bytes": 0, "acceptor_processes": processes},
        "storage": {"root": str(tmp / "storage"), "min_free_bytes": 0},
        "web": {"port": web},
    }))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "pgsam_node", "serve", "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = {"port": until(lambda: port_open(port), t0, timeout)}
        out["echo"] = until(lambda: echo_ok(port, "PGSAM"), t0, timeout)
        out["model"] = until(lambda: model_loaded(web), t0, timeout)
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def storescp_round(tmp: Path, timeout: float) -> dict:
    port = free_port()
    (tmp / "scp").mkdir()
    t0 = time.monotonic()
    proc = subprocess.Popen([STORESCP, "-od", str(tmp / "scp"), str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        return {"port": until(lambda: port_open(port), t0, timeout),
                "echo": until(lambda: echo_ok(port, "ANY-SCP"), t0, timeout)}
    finally:
        proc.terminate()
        proc.wait(10)


def burners(k: int) -> list[subprocess.Popen]:
    code = "import time\nt=time.monotonic()\nwhile time.monotonic()-t<600: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(k)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--load", type=int, nargs="*", default=[0, 4], help="busy processes per measurement")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--processes", type=int, nargs="*", default=[1], help="dicom.acceptor_processes per node row")
    args = ap.parse_args()
    for tool in (ECHOSCU, STORESCP):
        if not shutil.which(tool):
            print(f"{tool} not installed (Debian dcmtk)", file=sys.stderr)
            return 2
    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} at start")
    for k in args.load:
        burn = burners(k)
        loads = []
        try:
            node: dict[int, list[dict]] = {p: [] for p in args.processes}
            scp = []
            for _ in range(args.rounds):
                loads.append(os.getloadavg()[0])
                with tempfile.TemporaryDirectory() as d:
                    scp.append(storescp_round(Path(d), args.timeout))
                for p in args.processes:
                    with tempfile.TemporaryDirectory() as d:
                        node[p].append(node_round(Path(d), args.timeout, p))
        finally:
            for p in burn:
                p.kill()
                p.wait()

        def med(rows, key):
            return statistics.median(r[key] for r in rows)

        print(f"\n== {k} busy processes, {args.rounds} rounds (medians, seconds from spawn; "
              f"load average {min(loads):.1f}-{max(loads):.1f})")
        print(f"  storescp: port {med(scp, 'port'):.3f}  first echo {med(scp, 'echo'):.3f}")
        for p, rows in node.items():
            print(f"  node, {p} acceptor process{'es' if p > 1 else ''}: port {med(rows, 'port'):.3f} "
                  f"(max {max(r['port'] for r in rows):.3f})  first echo {med(rows, 'echo'):.3f}  "
                  f"model loaded {med(rows, 'model'):.3f}")
            print(f"    ratio storescp/node (first echo): {med(scp, 'echo') / med(rows, 'echo'):.3f}x  "
                  f"(target: node's port accepting within 2 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
