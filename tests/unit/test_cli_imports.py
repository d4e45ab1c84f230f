"""The command line stays light: parsing any command loads no heavy stage library (issue 17).

``pgsam-node serve`` must open its DICOM port within about a second even on a busy machine; the
parser imports every command module, so none of them may import torch, transformers, FastAPI,
pynetdicom or highdicom at module level (they import what they need inside ``run``).
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "fastapi", "uvicorn", "pynetdicom", "highdicom", "segment_anything")


def test_building_the_parser_imports_no_heavy_library():
    code = (
        "import json, sys\n"
        "from pgsam_node.cli import build_parser\n"
        "build_parser()\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_lazy_web_names_resolve():
    import pgsam_node.web as web

    assert callable(web.create_app) and web.WebServer.__name__ == "WebServer"
