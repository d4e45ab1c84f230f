"""``pgsam-node web`` as a process: first-run token on stderr once, API with it, clean stop;
``pgsam-node retention --dry-run``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import httpx
import yaml

from ..helpers import PROJECT_ROOT, free_port, wait_for, wait_port


def _start(cfg, errlog):
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.Popen([sys.executable, "-m", "pgsam_node", "web", "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=errlog)


def test_web_process_first_run_token(tmp_path):
    port = free_port()
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump({"storage": {"root": str(tmp_path / "st")}, "web": {"port": port},
                                   "logging": {"json": True}}))
    err = tmp_path / "err1.log"
    with open(err, "w") as f:
        p = _start(cfg, f)
        try:
            wait_port(port, timeout=60)
            token_file = tmp_path / "st" / "secrets" / "first-run-admin-token"
            wait_for(lambda: "first run" in err.read_text(), 20, what="first-run banner")
            token = token_file.read_text().strip()
            assert oct(token_file.stat().st_mode & 0o777) == "0o600"
            r = httpx.get(f"http://127.0.0.1:{port}/api/v1/me", headers={"Authorization": f"Bearer {token}"})
            assert r.json() == {"name": "admin", "scopes": ["admin", "read"], "via": "token"}
            assert httpx.get(f"http://127.0.0.1:{port}/api/v1/me").status_code == 401
        finally:
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=30) == 0
    text = err.read_text()
    # stderr is the service log (not a terminal): it never carries the token, only where it is
    log_lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    assert log_lines and token not in text and "first-run-admin-token" in text
    secret = tmp_path / "st" / "secrets" / "web_session.key"
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    # second start: no new token is printed
    err2 = tmp_path / "err2.log"
    with open(err2, "w") as f:
        p = _start(cfg, f)
        try:
            wait_port(port, timeout=60)
        finally:
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=30) == 0
    assert not re.search(r"pgsam_\w{12}_", err2.read_text()) and "first run" not in err2.read_text()

    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    r = subprocess.run([sys.executable, "-m", "pgsam_node", "retention", "--dry-run", "--config", str(cfg)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["studies_purged"] == 0 and json.loads(r.stdout)["dry_run"] is True
