"""Rough edges a new admin meets: closed pipes, forgotten --config, env typos, a busy DICOM port."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgsam_node.config import load_settings
from pgsam_node.errors import ConfigError

from ..helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def _cfg(tmp_path, **extra) -> Path:
    cfg = tmp_path / "node.yaml"
    data = {"storage": {"root": str(tmp_path / "st"), "min_free_bytes": 0}, "web": {"port": free_port()}}
    data.update(extra)
    cfg.write_text(yaml.safe_dump(data))
    return cfg


@pytest.mark.parametrize("argv", [["config", "show"], ["status"]])
def test_closed_pipe_is_not_a_traceback(tmp_path, argv):
    p = subprocess.Popen([sys.executable, "-m", "pgsam_node", *argv, "--config", str(_cfg(tmp_path))], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader (`| head`) is gone before the command writes
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_env_variable_typo_names_the_variable(monkeypatch):
    monkeypatch.setenv("PGSAM_DICOM__PROT", "1")
    with pytest.raises(ConfigError, match="environment variable PGSAM_DICOM__PROT: dicom.prot: unknown key"):
        load_settings(None)


def test_missing_config_warns_and_pgsam_config_is_used(tmp_path, monkeypatch, capsys):
    from argparse import Namespace

    from pgsam_node.commands import load

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PGSAM_CONFIG", raising=False)
    load(Namespace(config=None))
    assert "no --config FILE and no PGSAM_CONFIG" in capsys.readouterr().err
    monkeypatch.setenv("PGSAM_CONFIG", str(_cfg(tmp_path)))
    s = load(Namespace(config=None))
    assert "no --config" not in capsys.readouterr().err and s.storage_root == tmp_path / "st"


def test_busy_dicom_port_is_a_clean_message_and_creates_no_token(tmp_path):
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        cfg = _cfg(tmp_path, dicom={"port": port, "bind": "127.0.0.1", "refuse_below_free_bytes": 0},
                   worker={"embedded": False})
        r = subprocess.run([sys.executable, "-m", "pgsam_node", "serve", "--config", str(cfg)], env=ENV,
                           capture_output=True, text=True, timeout=180)
    finally:
        holder.close()
    assert r.returncode == 2, r.stderr
    assert f"cannot open the DICOM port 127.0.0.1:{port}: it is already in use" in r.stderr
    assert "Traceback" not in r.stderr
    assert not re.search(r"pgsam_[0-9a-f]{12}_", r.stdout + r.stderr)  # no token printed
    assert not (tmp_path / "st" / "secrets" / "first-run-admin-token").exists()


def test_first_run_token_never_on_a_log_stream_and_recovery_when_none_usable(settings):
    import io

    from pgsam_node.db import Database
    from pgsam_node.web import tokens
    from pgsam_node.web.server import announce_first_run_token, token_file

    db = Database(settings.database_url)
    try:
        log_stream = io.StringIO()  # not a terminal: what a service manager records
        token = announce_first_run_token(db, settings.storage_root, stream=log_stream)
        assert token and token not in log_stream.getvalue()
        assert token_file(settings.storage_root).read_text().strip() == token
        assert str(token_file(settings.storage_root)) in log_stream.getvalue()
        again = io.StringIO()
        assert announce_first_run_token(db, settings.storage_root, stream=again) is None and again.getvalue() == ""
        with db.transaction() as s:
            tokens.revoke_token(s, "admin")
        recovery = io.StringIO()
        assert announce_first_run_token(db, settings.storage_root, stream=recovery) is None
        assert "no usable administrator token" in recovery.getvalue()
        assert "pgsam-node token create admin2 --scope admin" in recovery.getvalue()
    finally:
        db.dispose()


def test_readme_never_runs_the_venv_dicom_tools():
    """The venv's pynetdicom storescu/echoscu/storescp shadow DCMTK's: README commands use /usr/bin/."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    cmds = [ln for b in blocks for ln in b.splitlines() if re.search(r"(?<![/\w-])(storescu|echoscu|storescp|findscu)\b", ln)]
    assert not cmds, f"README runs a DCMTK tool without /usr/bin/: {cmds}"
    assert "/usr/bin/storescu" in text and "PGSAM_CONFIG" in text and "## Troubleshooting" in text
    assert "../shared/data/" in text and "-rs" in text
