"""``pgsam-node token create|list|revoke`` as a user runs it (a subprocess on a config file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from pgsam_node.db import Database
from pgsam_node.web.tokens import verify_token

from ..helpers import PROJECT_ROOT


def _cli(cfg, *args):
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run([sys.executable, "-m", "pgsam_node", *args, "--config", str(cfg)], capture_output=True,
                          text=True, env=env, timeout=60)


def test_token_lifecycle(tmp_path):
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump({"storage": {"root": str(tmp_path / "st")}}))
    r = _cli(cfg, "token", "create", "pacs-robot", "--scope", "report-text")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("pgsam_") and token not in r.stderr
    db = Database(f"sqlite:///{tmp_path / 'st' / 'node.sqlite3'}")
    with db.session() as s:
        p = verify_token(s, token)
        assert p is not None and p.name == "pacs-robot" and p.can("report-text") and not p.can("actions")
    r = _cli(cfg, "token", "create", "pacs-robot")
    assert r.returncode == 2 and "exists" in r.stderr
    r = _cli(cfg, "token", "create", "x", "--scope", "root")
    assert r.returncode != 0 and "invalid choice" in r.stderr
    rows = json.loads(_cli(cfg, "token", "list", "--json").stdout)
    assert rows == [{"name": "pacs-robot", "scopes": ["read", "report-text"], "created_at": rows[0]["created_at"],
                     "last_used_at": None, "revoked": False}]
    assert token not in _cli(cfg, "token", "list").stdout
    assert _cli(cfg, "token", "revoke", "pacs-robot").returncode == 0
    with db.session() as s:
        assert verify_token(s, token) is None
    assert _cli(cfg, "token", "revoke", "nobody").returncode == 2
