"""A throw-away PKI made with the ``openssl`` CLI: a CA, a rogue CA, a server certificate for
127.0.0.1/localhost and a client certificate (for mutual TLS)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def _ossl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> Path:
    """Write ``ca``, ``rogue``, ``server`` and ``client`` ``.pem``/``.key`` files into ``d``."""
    if not shutil.which("openssl"):
        pytest.skip("openssl CLI not installed")
    for ca in ("ca", "rogue"):
        _ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
              "-subj", f"/CN=PG-SAM test {ca} CA", "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        _ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{name}.pem",
              "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d
