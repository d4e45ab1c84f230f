#!/usr/bin/env python3
"""Ingest throughput: DCMTK storescu -> DCMTK storescp (anchor) vs -> the node (fsync on).

Generates N MR instances (256x256, 16-bit, one series) with pydicom in a temporary folder, sends
them with ``storescu`` over one association to each receiver in turn, and prints instances/s
for both and the ratio node/storescp (the headline number). storescp writes files without fsync
and indexes nothing; the node fsyncs each file and its directory and commits an index row before
acknowledging (with ``storage.write_protocol: journal``, the default, one journal flush per
acknowledgement; with ``rename``, the file's and the directory's). Also printed, to show where the
time goes: a pynetdicom SCP that stores nothing, the durable write alone (no network), and the
node's CPU time per instance.

``--senders K [K ...]`` (K > 1) adds a second measurement: K storescu processes send N/K instances
each at once, as a PACS routing with several associations does, to ``storescp --fork`` (one process
per association) and to the node (one thread per association). ``--processes P [P ...]`` adds a row
per P > 1 for the node with ``dicom.acceptor_processes: P`` (P acceptor worker processes sharing
the port) to each parallel measurement; ``--skip-rename`` leaves out the rename-protocol rows.

Every row is the median of ``--rounds`` alternating runs (default 5) with the load average at each
run; ratios are per round (same conditions) and their median. The floor of each durable-write
protocol (the node's own spool code with no network) and the flush latency of this disk (new file
+ rename + directory fsync, and an overwrite in a preallocated file) are printed too.

Usage: python benchmarks/ingest.py [-n 500] [--rounds 5] [--senders 4 8] [--processes 4] [--skip-single]
       [--skip-rename] [--database-url URL]
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
from pgsam_node.ingest.journal import Journal
root = Path(sys.argv[2])
protocol = sys.argv[3]
settings = SimpleNamespace(storage_root=root, tmp_dir=root / "tmp", storage=SimpleNamespace(
    root=root, fsync=True, min_free_bytes=0, write_protocol=protocol, journal_segment_bytes=64 << 20,
    journal_checkpoint_seconds=2.0))
journal = Journal(settings).open() if protocol == "journal" else None
(root / "spool").mkdir(parents=True, exist_ok=True)
class Sink:
    def __init__(self, cmd, ts):
        self.uid = cmd[dimse.AFFECTED_SOP_INSTANCE_UID]
        self.f = spool.IncomingFile(settings, spool.file_meta_bytes(cmd[dimse.AFFECTED_SOP_CLASS_UID], self.uid, ts),
                                    journal=journal)
    def write(self, data):
        self.f.write(data)
    def finish(self):
        self.f.commit(f"spool/{self.uid}.dcm", replace=False)
        self.f.make_durable()
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


def run_durable_receiver(folder: Path, root: Path, protocol: str) -> float:
    """The node's own acceptor with a sink that only does the durable write of ``protocol`` (no
    header scan, no index): the floor of the node's design with that protocol, over the network."""
    root.mkdir()
    return run_python_receiver(DURABLE_RECEIVER, folder, "FLOOR", str(root), protocol)


def _settings(root: Path, protocol: str):
    from types import SimpleNamespace

    return SimpleNamespace(storage_root=root, tmp_dir=root / "tmp", storage=SimpleNamespace(
        root=root, fsync=True, min_free_bytes=0, write_protocol=protocol, journal_segment_bytes=64 << 20,
        journal_checkpoint_seconds=2.0))


def durable_write_floor(folder: Path, root: Path, protocol: str) -> float:
    """Seconds to make every file durable with ``protocol`` through the node's own spool code, with
    no network, parsing or database: ``rename`` (temporary file, fdatasync, rename, directory
    fsync) or ``journal`` (temporary file, rename, one journal record, fdatasync of the segment).
    The floor of any receiver using that protocol here."""
    sys.path.insert(0, str(ROOT))
    from pgsam_node.ingest import spool
    from pgsam_node.ingest.journal import Journal

    settings = _settings(root, protocol)
    (root / "spool").mkdir(parents=True)
    journal = Journal(settings).open() if protocol == "journal" else None
    if journal is not None:
        _wait_ready(journal)
    blobs = [p.read_bytes() for p in sorted(folder.iterdir())]
    try:
        t0 = time.perf_counter()
        for i, b in enumerate(blobs):
            f = spool.IncomingFile(settings, b, journal=journal)
            f.commit(f"spool/{i}.dcm", replace=False)
            f.make_durable()
        return time.perf_counter() - t0
    finally:
        if journal is not None:
            journal.close()


def _wait_ready(journal, timeout: float = 60.0) -> None:
    """Wait until the journal has a preallocated segment ready (as a node in service has)."""
    deadline = time.monotonic() + timeout
    while journal._ready is None and time.monotonic() < deadline:
        time.sleep(0.05)


def fsync_latency(root: Path, n: int = 50, size: int = 131072) -> tuple[float, float]:
    """Median ms of (a) fdatasync of a new 128 KiB file + rename + directory fsync (the rename
    protocol's flushes), (b) fdatasync of 128 KiB overwritten in a preallocated file (a journal
    record's flush)."""
    import statistics

    root.mkdir(parents=True)
    data = os.urandom(size)
    new, over = [], []
    for i in range(n):
        t0 = time.perf_counter()
        fd = os.open(root / f"{i}.part", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        os.write(fd, data)
        os.fdatasync(fd)
        os.close(fd)
        os.rename(root / f"{i}.part", root / f"{i}.dcm")
        dfd = os.open(root, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
        new.append(time.perf_counter() - t0)
    fd = os.open(root / "prealloc", os.O_RDWR | os.O_CREAT, 0o640)
    os.write(fd, bytes(size * n))
    os.fsync(fd)
    for i in range(n):
        t0 = time.perf_counter()
        os.pwrite(fd, data, i * size)
        os.fdatasync(fd)
        over.append(time.perf_counter() - t0)
    os.close(fd)
    return statistics.median(new) * 1000, statistics.median(over) * 1000


def _cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of a process and its children alive now (the acceptor workers;
    Linux /proc), 0 elsewhere."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        try:
            if int(entry.name) == pid or int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (IndexError, ValueError):
            continue
    return total


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


def run_node(folder: Path | list[Path], root: Path, n: int, db_url: str | None, protocol: str = "journal",
             processes: int = 1) -> float:
    port, web = free_port(), free_port()
    root.mkdir()
    cfg = root / "node.yaml"
    db = f"\ndatabase: {{url: '{db_url}'}}" if db_url else ""
    # Every sender connects from 127.0.0.1: the per-host limits must allow them all (8 senders).
    cfg.write_text(
        f"dicom: {{port: {port}, refuse_below_free_bytes: 0, acceptor_processes: {processes}, max_associations: 32,"
        f" max_associations_per_host: 32, max_pending_per_host: 32}}\nweb: {{port: {web}}}\n"
        f"storage: {{root: '{root / 'storage'}', min_free_bytes: 0, fsync: true, write_protocol: {protocol}}}\n"
        f"assembly: {{stable_seconds: 3600}}\nlogging: {{level: INFO}}{db}\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "pgsam_node", "serve", "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, timeout=300)  # a loaded machine can take minutes to import the node
        # The node in service: the port opens before the model loads in the background, so wait
        # for the load (/readyz) or its CPU would be counted against the instances.
        wait_model_loaded(web)
        cpu0 = _cpu_seconds(proc.pid)
        dt = send(port, folder, "PGSAM")
        cpu = _cpu_seconds(proc.pid) - cpu0
        what = f"{protocol}, {processes} acceptor process{'es' if processes > 1 else ''}"
        print(f"  node ({what}) CPU time: {cpu:.2f} s for {n} instances ({cpu / n * 1000:.2f} ms/instance, "
              f"wall {dt / n * 1000:.2f} ms)")
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    for line in (err or "").splitlines():
        if "records per flush" in line:
            print("  " + line[line.index("journal: ") :].replace("journal: journal: ", "journal: "))
    got = sum(1 for _ in (root / "storage" / "spool").rglob("*.dcm"))
    if got != n:
        raise RuntimeError(f"node stored {got} of {n}: {err[-2000:] if err else ''}")
    return dt


def _load() -> float:
    return os.getloadavg()[0]


class Series:
    """One benchmark row: seconds per run and the 1-minute load average at each run."""

    def __init__(self, label: str):
        self.label, self.secs, self.loads = label, [], []

    def add(self, seconds: float) -> None:
        self.secs.append(seconds)
        self.loads.append(_load())

    def rate(self, n: int) -> str:
        import statistics

        med = statistics.median(self.secs)
        return (f"{self.label:<44} {n / med:8.1f} instances/s  (median of {len(self.secs)}: {med:.2f} s, "
                f"{n / max(self.secs):.0f}-{n / min(self.secs):.0f}/s, load {min(self.loads):.1f}-{max(self.loads):.1f})")


def ratio(anchor: Series, other: Series) -> str:
    """Median and range of the per-round ratio anchor_seconds / other_seconds (same round)."""
    import statistics

    r = [a / b for a, b in zip(anchor.secs, other.secs)]
    return f"{statistics.median(r):.2f} (runs {', '.join(f'{x:.2f}' for x in r)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=500, help="instances (default 500)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are reported (default 5)")
    ap.add_argument("--database-url", default=None, help="node database (default: SQLite in the temp root)")
    ap.add_argument("--senders", type=int, nargs="+", default=[1],
                    help="also measure K parallel associations (each K > 1)")
    ap.add_argument("--processes", type=int, nargs="+", default=[1],
                    help="with --senders: also the node with dicom.acceptor_processes P (each P > 1)")
    ap.add_argument("--skip-single", action="store_true", help="only the parallel measurement")
    ap.add_argument("--skip-rename", action="store_true", help="no rename-protocol rows in the parallel measurement")
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
        print(f"instances: {args.n} ({mb:.1f} MB, 256x256 16-bit MR); {os.cpu_count()} CPUs; load average at start "
              f"{_load():.1f}")
        lat_new, lat_over = [], []
        if not args.skip_single:
            rows = {k: Series(v) for k, v in (
                ("scp", "storescp (DCMTK, no fsync)"), ("null", "pynetdicom null SCP (stores nothing)"),
                ("floor_j", "durable write alone, journal (no network)"),
                ("floor_r", "durable write alone, rename (no network)"),
                ("recv", "node acceptor + journal write only"), ("node", "pgsam-node serve (journal)"),
                ("node_r", "pgsam-node serve (rename protocol)"))}
            for r in range(args.rounds):
                a, b = fsync_latency(tmp / f"lat{r}")
                lat_new.append(a)
                lat_over.append(b)
                rows["scp"].add(run_storescp(src, tmp / f"scp{r}", args.n))
                rows["null"].add(run_null_scp(src))
                rows["floor_j"].add(durable_write_floor(src, tmp / f"floorj{r}", "journal"))
                rows["floor_r"].add(durable_write_floor(src, tmp / f"floorr{r}", "rename"))
                rows["recv"].add(run_durable_receiver(src, tmp / f"recv{r}", "journal"))
                rows["node"].add(run_node(src, tmp / f"node{r}", args.n, args.database_url, "journal"))
                rows["node_r"].add(run_node(src, tmp / f"noder{r}", args.n, args.database_url, "rename"))
                for d in tmp.glob(f"*{r}"):
                    shutil.rmtree(d, ignore_errors=True)
            print("one association:")
            for row in rows.values():
                print(row.rate(args.n))
            scp = rows["scp"]
            print(f"ratio null-pynetdicom/storescp: {ratio(scp, rows['null'])}")
            print(f"ratio durable-write-floor (journal)/storescp: {ratio(scp, rows['floor_j'])}")
            print(f"ratio durable-write-floor (rename)/storescp: {ratio(scp, rows['floor_r'])}")
            print(f"ratio acceptor+journal-write/storescp: {ratio(scp, rows['recv'])}")
            print(f"ratio node (journal)/storescp: {ratio(scp, rows['node'])}")
            print(f"ratio node (rename)/storescp: {ratio(scp, rows['node_r'])}")
        for k in (k for k in args.senders if k > 1):
            parts = split(src, k)
            procs = [p for p in args.processes if p > 1]
            pa = Series(f"storescp --fork, {k} associations")
            pj = Series(f"node (journal, group commit), {k} assoc.")
            pp = {p: Series(f"node, {p} acceptor processes, {k} assoc.") for p in procs}
            pr = None if args.skip_rename else Series(f"node (rename protocol), {k} assoc.")
            for r in range(args.rounds):
                a, b = fsync_latency(tmp / f"plat{k}-{r}")
                lat_new.append(a)
                lat_over.append(b)
                pa.add(run_storescp(parts, tmp / f"pscp{k}-{r}", args.n))
                pj.add(run_node(parts, tmp / f"pnode{k}-{r}", args.n, args.database_url, "journal"))
                for p, row in pp.items():
                    row.add(run_node(parts, tmp / f"pnode{k}-{p}p-{r}", args.n, args.database_url, "journal", p))
                if pr is not None:
                    pr.add(run_node(parts, tmp / f"pnoder{k}-{r}", args.n, args.database_url, "rename"))
                for d in tmp.glob(f"p*{k}*-{r}"):
                    shutil.rmtree(d, ignore_errors=True)
            print(f"{k} parallel associations:")
            for row in (pa, pj, *pp.values(), *([pr] if pr is not None else [])):
                print(row.rate(args.n))
            print(f"ratio node (journal)/storescp --fork with {k} associations: {ratio(pa, pj)}")
            for p, row in pp.items():
                print(f"ratio node ({p} acceptor processes)/storescp --fork with {k} associations: {ratio(pa, row)}")
            if pr is not None:
                print(f"ratio node (rename)/storescp --fork with {k} associations: {ratio(pa, pr)}")
                print(f"group commit + journal vs rename protocol, {k} associations: {ratio(pr, pj)}")
            for d in parts:
                shutil.rmtree(d, ignore_errors=True)
        import statistics

        print(f"fsync latency (median per round, ms): new file + rename + dir fsync "
              f"{statistics.median(lat_new):.2f} ({min(lat_new):.2f}-{max(lat_new):.2f}); "
              f"overwrite in a preallocated file {statistics.median(lat_over):.2f} "
              f"({min(lat_over):.2f}-{max(lat_over):.2f}); load average at end {_load():.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
