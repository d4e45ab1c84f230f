"""`python -m pgsam_node serve` with acceptor worker processes listens on the DICOM port before the
heavy imports (pgsam_node.prebind); serve uses that socket only when the validated settings agree."""

from __future__ import annotations

import socket

from pgsam_node import prebind
from tests.helpers import free_port


def _cfg(tmp_path, **dicom):
    import yaml

    p = tmp_path / "node.yaml"
    p.write_text(yaml.safe_dump({"dicom": dicom}))
    return str(p)


def test_binds_only_for_serve_with_acceptor_processes(tmp_path, monkeypatch):
    monkeypatch.delenv("PGSAM_CONFIG", raising=False)
    port = free_port()
    one = _cfg(tmp_path, port=port)
    prebind.bind_early(["serve", "--config", one])
    assert prebind.take("127.0.0.1", port) is None  # one process: the port opens after recovery
    four = _cfg(tmp_path, port=port, acceptor_processes=4)
    prebind.bind_early(["status", "--config", four])
    assert prebind.take("127.0.0.1", port) is None  # not serve
    prebind.bind_early(["serve", "--config", four])
    sock = prebind.take("127.0.0.1", port)
    try:
        assert sock is not None and sock.getsockname()[1] == port
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # accepting (into the kernel's queue)
    finally:
        sock.close()


def test_environment_wins_and_a_mismatch_is_closed(tmp_path, monkeypatch):
    port, other = free_port(), free_port()
    cfg = _cfg(tmp_path, port=port)
    monkeypatch.setenv("PGSAM_DICOM__ACCEPTOR_PROCESSES", "2")
    monkeypatch.setenv("pgsam_dicom__port", str(other))
    prebind.bind_early(["serve", "-c", cfg])
    assert prebind.take("127.0.0.1", port) is None  # validated settings name another port: closed
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", other)) != 0


def test_anything_unexpected_means_no_early_socket(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dicom: [not, a, mapping")
    prebind.bind_early(["serve", "--config", str(bad)])
    assert prebind._early is None
    prebind.bind_early(["serve", "--config", str(tmp_path / "missing.yaml")])
    assert prebind._early is None
