"""Fixtures shared by every test layer."""

from __future__ import annotations

import logging
import uuid

import pytest

from pgsam_node.config import load_settings

from .factories import MRSeries
from .helpers import SHARED_DATA, free_port

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """Tests that call ``setup_logging`` (directly or through the CLI in-process) replace the root
    handlers with one bound to that test's captured stderr; pytest closes that stream after the
    test, and a later test's log line then fails with 'I/O operation on closed file'. Put the
    root logger back as it was."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    # Only the node's own handlers: pytest's capture handlers come and go with each test phase.
    for h in list(root.handlers):
        if type(h) is logging.StreamHandler and h not in before:
            root.removeHandler(h)
    root.setLevel(level)


@pytest.fixture
def shared_data():
    """Path of ``../shared/data/tcia-pgbm``; skips with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real MR data not present at {SHARED_DATA} (../shared/data/tcia-pgbm)")
    return SHARED_DATA


@pytest.fixture
def settings(tmp_path):
    """Embedded-default settings on a temporary storage root and a free DICOM port."""
    return load_settings(
        None,
        storage={"root": str(tmp_path / "storage"), "min_free_bytes": 0},
        dicom={"port": free_port(), "refuse_below_free_bytes": 0},
        web={"port": free_port()},
    )


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database on 127.0.0.1:5432, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"pgsam_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432: {exc.orig}")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def mr_files(tmp_path):
    """Write an MR series from the factory under ``tmp_path``.

    ``mr_files(name="mr", **knobs)`` takes any :class:`tests.factories.MRSeries` knob and returns
    (paths, datasets), both in slice order. Instance numbers are shuffled unless a knob says
    otherwise, so code that trusts InstanceNumber fails.
    """

    def write(name: str = "mr", **knobs):
        knobs.setdefault("instance_numbers", "shuffled")
        spec = MRSeries(**knobs)
        return spec.write(tmp_path / name), spec.datasets()

    return write
