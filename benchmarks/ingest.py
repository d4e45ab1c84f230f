#!/usr/bin/env python3
"""Ingest throughput: DCMTK storescu -> DCMTK storescp (anchor) vs -> the node (fsync on).

Generates N MR instances (256x256, 16-bit, one series) with pydicom in a temporary folder, sends
them with ``storescu`` over one association to each receiver in turn, and prints instances/s
for both and the ratio node/storescp (the headline number). storescp writes files without fsync
and indexes nothing; the node fsyncs each file and its directory and commits an index row before
acknowledging. Also printed, to show where the time goes: a pynetdicom SCP that stores nothing,
the durable write alone (no network), and the node's CPU time per instance.

``--senders K`` (K > 1) adds a second measurement: K storescu processes send N/K instances each
at once, as a PACS routing with several associations does, to ``storescp --fork`` (one process
per association) and to the node (one thread per association).

Usage: python benchmarks/ingest.py [-n 500] [--rounds 1] [--senders 4] [--database-url URL]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.factories import Geometry, MRSeries  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def make_instances(folder: Path, n: int, size: int = 256) -> list[Path]:
    """``n`` slices of one MR series (``size`` x ``size``, 16-bit) from the test-data factory."""
    series = MRSeries(n_slices=n, geometry=Geometry(rows=size, columns=size), patient_id="BENCH", patient_name="Bench^Ingest")
    return series.write(folder)


#: This DCMTK build leaves Nagle's algorithm on unless TCP_NODELAY=1 is set (DCMTK's documented
#: environment switch); without it every C-STORE waits ~40 ms for a delayed ACK and the anchor is
#: artificially slow. The switch is set for every DCMTK process here so the anchor is fair.
DCMTK_ENV = dict(os.environ, TCP_NODELAY="1")


def send(port: int, folder: Path | list[Path], aet: str) -> float:
    """Send with storescu (one association per folder, all folders at once); seconds until all end."""
    folders = folder if isinstance(folder, list) else [folder]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aec", aet, "-aet", "BENCH", "+sd", "127.0.0.1", str(port), str(f)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=DCMTK_ENV)
             for f in folders]
    errors = [p.communicate()[1] for p in procs]
    dt = time.perf_counter() - t0
    for p, err in zip(procs, errors):
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err[-2000:]}")
    return dt


def split(folder: Path, k: int) -> list[Path]:
    """Hard-link the instances of ``folder`` into ``k`` sub-folders (round robin)."""
    parts = [folder.parent / f"{folder.name}-part{i}" for i in range(k)]
    for p in parts:
        p.mkdir(exist_ok=True)
    for i, f in enumerate(sorted(folder.iterdir())):
        os.link(f, parts[i % k] / f.name)
    return parts


def run_storescp(folder: Path | list[Path], out: Path, n: int) -> float:
    port = free_port()
    out.mkdir()
    fork = ["--fork"] if isinstance(folder, list) else []
    proc = subprocess.Popen(["storescp", *fork, "-od", str(out), "-aet", "STORESCP", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=DCMTK_ENV)
    try:
        wait_port(port)
        dt = send(port, folder, "STORESCP")
    finally:
        proc.terminate()
        proc.wait(10)
    got = sum(1 for _ in out.rglob("*") if _.is_file())
    if got != n:
        raise RuntimeError(f"storescp stored {got} of {n}")
    return dt


NULL_SCP = """
import sys
from pynetdicom import AE, AllStoragePresentationContexts, ALL_TRANSFER_SYNTAXES, evt
ae = AE(ae_title="NULLSCP")
for cx in AllStoragePresentationContexts:
    ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
ae.maximum_pdu_size = 0
ae.start_server(("127.0.0.1", int(sys.argv[1])), block=True, evt_handlers=[(evt.EVT_C_STORE, lambda e: 0x0000)])
"""


def run_python_receiver(code: str, folder: Path, aet: str, *args: str) -> float:
    """Run ``python -c code PORT *args`` as a receiver, send ``folder`` to it, stop it."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", code, str(port), *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        return send(port, folder, aet)
    finally:
        proc.terminate()
        proc.wait(10)


def run_null_scp(folder: Path) -> float:
    """pynetdicom SCP that acknowledges without storing: the floor of any pynetdicom-based node."""
    return run_python_receiver(NULL_SCP, folder, "NULLSCP")


DURABLE_RECEIVER = """
import sys
from types import SimpleNamespace
from pathlib import Path
from pynetdicom import AllStoragePresentationContexts, ALL_TRANSFER_SYNTAXES
from pgsam_node.ingest import spool
from pgsam_node.ingest.dicomnet import dimse
from pgsam_node.ingest.dicomnet.acceptor import Acceptor
root = Path(sys.argv[2])
settings = SimpleNamespace(storage_root=root, tmp_dir=root / "tmp",
                           storage=SimpleNamespace(root=root, fsync=True, min_free_bytes=0))
class Sink:
    def __init__(self, cmd, ts):
        self.uid = cmd[dimse.AFFECTED_SOP_INSTANCE_UID]
        self.f = spool.IncomingFile(settings, spool.file_meta_bytes(cmd[dimse.AFFECTED_SOP_CLASS_UID], self.uid, ts))
    def write(self, data):
        self.f.write(data)
    def finish(self):
        self.f.commit(f"spool/{self.uid}.dcm")
        return 0, None
    def discard(self):
        self.f.discard()
class Service:
    def check_association(self, rq, assoc): return None
    def echo(self, assoc): return 0
    def begin_store(self, assoc, ts, cmd): return Sink(cmd, ts)
    def event_report(self, *a): return 0x0110
    def association_ended(self, *a): pass
every = frozenset(str(t) for t in ALL_TRANSFER_SYNTAXES)
acc = Acceptor(Service(), "127.0.0.1", int(sys.argv[1]), {str(c.abstract_syntax): every for c in AllStoragePresentationContexts})
acc.start()
acc._thread.join()
"""


def run_durable_receiver(folder: Path, root: Path) -> float:
    """The node's own acceptor with a sink that only does the durable write (temporary file,
    fdatasync, rename, directory fsync): no header scan, no index. The floor of this design here."""
    root.mkdir()
    return run_python_receiver(DURABLE_RECEIVER, folder, "FLOOR", str(root))


def durable_write_floor(folder: Path, root: Path) -> float:
    """Seconds to write every file the way the node must (tmp file, fdatasync, rename, directory
    fsync) with no network, parsing or database: the floor of any durable receiver here."""
    tmp, dst = root / "tmp", root / "spool"
    tmp.mkdir(parents=True)
    dst.mkdir()
    blobs = [p.read_bytes() for p in sorted(folder.iterdir())]
    t0 = time.perf_counter()
    for i, b in enumerate(blobs):
        t = tmp / f"{i}.part"
        fd = os.open(t, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        os.write(fd, b)
        os.fdatasync(fd)
        os.close(fd)
        os.rename(t, dst / f"{i}.dcm")
        dfd = os.open(dst, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
    return time.perf_counter() - t0


def _cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of a process (Linux /proc), 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def wait_model_loaded(web_port: int, timeout: float = 300.0) -> None:
    import json
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/readyz", timeout=2) as r:
                state = json.loads(r.read()).get("checks", {}).get("model", {}).get("state")
        except Exception:  # noqa: BLE001 - 503 or not listening yet
            state = None
        if state in ("loaded", "failed"):
            return
        time.sleep(0.2)
    raise RuntimeError("the node's model did not load")


def run_node(folder: Path | list[Path], root: Path, n: int, db_url: str | None) -> float:
    port, web = free_port(), free_port()
    root.mkdir()
    cfg = root / "node.yaml"
    db = f"\ndatabase: {{url: '{db_url}'}}" if db_url else ""
    cfg.write_text(
        f"dicom: {{port: {port}, refuse_below_free_bytes: 0}}\nweb: {{port: {web}}}\n"
        f"storage: {{root: '{root / 'storage'}', min_free_bytes: 0, fsync: true}}\n"
        f"assembly: {{stable_seconds: 3600}}\nlogging: {{level: WARNING}}{db}\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "pgsam_node", "serve", "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port)
        # The node in service: the port opens before the model loads in the background, so wait
        # for the load (/readyz) or its CPU would be counted against the instances.
        wait_model_loaded(web)
        cpu0 = _cpu_seconds(proc.pid)
        dt = send(port, folder, "PGSAM")
        cpu = _cpu_seconds(proc.pid) - cpu0
        print(f"node CPU time: {cpu:.2f} s for {n} instances ({cpu / n * 1000:.2f} ms/instance, wall {dt / n * 1000:.2f} ms)")
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    got = sum(1 for _ in (root / "storage" / "spool").rglob("*.dcm"))
    if got != n:
        raise RuntimeError(f"node stored {got} of {n}: {err[-2000:] if err else ''}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=500, help="instances (default 500)")
    ap.add_argument("--rounds", type=int, default=1, help="alternate rounds; best of each is reported")
    ap.add_argument("--database-url", default=None, help="node database (default: SQLite in the temp root)")
    ap.add_argument("--senders", type=int, default=1, help="also measure K parallel associations (K > 1)")
    args = ap.parse_args()
    for tool in ("storescu", "storescp"):
        if not shutil.which(tool):
            print(f"{tool} (DCMTK) not found", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="pgsam-bench-") as tmp:
        tmp = Path(tmp)
        src = tmp / "src"
        src.mkdir()
        make_instances(src, args.n)
        mb = sum(p.stat().st_size for p in src.iterdir()) / 1e6
        anchor, null, floor, recv, node = [], [], [], [], []
        for r in range(args.rounds):
            anchor.append(run_storescp(src, tmp / f"scp{r}", args.n))
            null.append(run_null_scp(src))
            floor.append(durable_write_floor(src, tmp / f"floor{r}"))
            recv.append(run_durable_receiver(src, tmp / f"recv{r}"))
            node.append(run_node(src, tmp / f"node{r}", args.n, args.database_url))
        a, z, f, d, b = min(anchor), min(null), min(floor), min(recv), min(node)
        print(f"instances: {args.n} ({mb:.1f} MB, 256x256 16-bit MR, one association); load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"storescp (DCMTK, no fsync):          {args.n / a:8.1f} instances/s  ({a:.2f} s)")
        print(f"pynetdicom null SCP (stores nothing): {args.n / z:8.1f} instances/s  ({z:.2f} s)")
        print(f"durable write alone (2 fsyncs, no net): {args.n / f:6.1f} instances/s  ({f:.2f} s)")
        print(f"node acceptor + durable write only:   {args.n / d:8.1f} instances/s  ({d:.2f} s)")
        print(f"pgsam-node serve (fsync on):          {args.n / b:8.1f} instances/s  ({b:.2f} s)")
        print(f"ratio null-pynetdicom/storescp: {a / z:.2f}")
        print(f"ratio durable-write-floor/storescp: {a / f:.2f}")
        print(f"ratio acceptor+durable-write/storescp: {a / d:.2f}")
        print(f"ratio node/storescp: {a / b:.2f}")
        if args.senders > 1:
            parts = split(src, args.senders)
            pa, pb = [], []
            for r in range(args.rounds):
                pa.append(run_storescp(parts, tmp / f"pscp{r}", args.n))
                pb.append(run_node(parts, tmp / f"pnode{r}", args.n, args.database_url))
            a2, b2 = min(pa), min(pb)
            print(f"{args.senders} parallel associations:")
            print(f"storescp --fork (DCMTK, no fsync):   {args.n / a2:8.1f} instances/s  ({a2:.2f} s)")
            print(f"pgsam-node serve (fsync on):          {args.n / b2:8.1f} instances/s  ({b2:.2f} s)")
            print(f"ratio node/storescp with {args.senders} associations: {a2 / b2:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
