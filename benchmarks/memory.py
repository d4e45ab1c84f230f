#!/usr/bin/env python3
"""Memory of ``pgsam-node serve``: peak RSS idle, while receiving, and while running inference.

One node process (embedded default: SQLite, local storage, bundled model, web on) on a fresh
storage root. A sampler thread reads ``VmRSS`` from ``/proc/PID/status`` every 50 ms.

Phases, each printed with the RSS at its end and the peak during it:
1. idle, after the model is loaded (``/readyz`` ``checks.model.state == "loaded"``);
2. receiving N1 instances (default 1,000) over one DCMTK ``storescu`` association;
3. receiving N2 - N1 more (default up to 5,000 in all): RSS at N1 and at N2 are compared, since
   nothing may grow per instance (the headline ratio RSS(N2) / RSS(N1), ideally ~1.0);
4. inference: a synthetic T1/T2/T1C study with its report (``pgsam-node synth`` + ``ris import``),
   sent and run to DONE or NO_FINDING.

The anchor, measured in the same run, is DCMTK ``storescp`` receiving the same N2 instances: its
peak RSS is printed beside the node's receive peak.

Usage: python benchmarks/memory.py [--n1 1000] [--n2 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import free_port, make_instances, wait_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Sampler(threading.Thread):
    """Peak RSS of one process since the last :meth:`reset`."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except OSError:
                return
            time.sleep(0.05)

    def reset(self) -> int:
        peak, self.peak = self.peak, 0
        return peak


def send(folder: Path, port: int, aet: str) -> None:
    """Every ``*.dcm`` under ``folder`` over one DCMTK storescu association."""
    subprocess.run([STORESCU, "-aec", aet, "+sd", "+r", "+sp", "*.dcm", "127.0.0.1", str(port), str(folder)],
                   check=True, capture_output=True, env=dict(os.environ, TCP_NODELAY="1"))


def readyz(web: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/readyz", timeout=2) as r:
            return json.loads(r.read())
    except Exception:  # noqa: BLE001 - 503 while loading or failed
        return {}


def until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n1", type=int, default=1000)
    ap.add_argument("--n2", type=int, default=5000)
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        first, rest = tmp / "in" / "first", tmp / "in" / "rest"
        first.mkdir(parents=True)
        rest.mkdir(parents=True)
        make_instances(first, args.n1, size=128)
        make_instances(rest, args.n2 - args.n1, size=128)

        # Anchor: storescp receiving the same instances.
        scp_port = free_port()
        (tmp / "scp").mkdir()
        scp = subprocess.Popen([STORESCP, "-od", str(tmp / "scp"), str(scp_port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        wait_port(scp_port)
        s = Sampler(scp.pid)
        s.start()
        send(tmp / "in", scp_port, "ANY-SCP")
        scp_peak = s.reset()
        s.stop.set()
        scp.terminate()
        scp.wait(10)

        port, web = free_port(), free_port()
        cfg = tmp / "node.yaml"
        cfg.write_text(json.dumps({
            "dicom": {"port": port, "refuse_below_free_bytes": 0},
            "storage": {"root": str(tmp / "storage"), "min_free_bytes": 0},
            "web": {"port": web},
            "assembly": {"stable_seconds": 2, "check_interval_seconds": 0.5},
        }))
        node = subprocess.Popen([sys.executable, "-m", "pgsam_node", "serve", "--config", str(cfg)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            s = Sampler(node.pid)
            s.start()
            until(lambda: readyz(web).get("checks", {}).get("model", {}).get("state") == "loaded", args.timeout,
                  "model loaded")
            time.sleep(2)
            idle_peak, idle = s.reset(), rss_kib(node.pid)
            print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
            print(f"idle (model loaded):        RSS {mib(idle)}, peak {mib(idle_peak)}")
            send(first, port, "PGSAM")
            at_n1, peak1 = rss_kib(node.pid), s.reset()
            print(f"after {args.n1:>5} instances:      RSS {mib(at_n1)}, peak while receiving {mib(peak1)}")
            send(rest, port, "PGSAM")
            at_n2, peak2 = rss_kib(node.pid), s.reset()
            print(f"after {args.n2:>5} instances:      RSS {mib(at_n2)}, peak while receiving {mib(peak2)}")
            print(f"storescp receiving {args.n2}:    peak {mib(scp_peak)} (anchor)")
            print(f"ratio RSS({args.n2}) / RSS({args.n1}): {at_n2 / at_n1:.3f}x  (1.0 = nothing grows per instance)")

            case = tmp / "case"
            py = [sys.executable, "-m", "pgsam_node"]
            subprocess.run([*py, "synth", "--config", str(cfg), "--out", str(case), "--seed", "7"], env=env,
                           check=True, capture_output=True)
            csvs = sorted(case.rglob("*.csv"))
            if csvs:
                subprocess.run([*py, "ris", "import", "--config", str(cfg), str(csvs[0])], env=env, check=True,
                               capture_output=True)
            send(case, port, "PGSAM")

            def finished() -> bool:
                r = subprocess.run([*py, "status", "--json", "--config", str(cfg)], env=env, capture_output=True,
                                   text=True)
                try:
                    studies = json.loads(r.stdout)["studies"]
                except (ValueError, KeyError):
                    return False
                states = [st.get("state") for st in studies]
                return any(x in ("DONE", "NO_FINDING", "FAILED", "SENDING", "ENCODED") for x in states)

            until(finished, args.timeout, "the synthetic study to finish")
            print(f"inference (one study):      RSS {mib(rss_kib(node.pid))}, peak {mib(s.reset())}")
        finally:
            node.terminate()
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
