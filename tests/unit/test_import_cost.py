"""``import pgqueue`` stays light: alembic and SQLAlchemy load only when a
migration runs (they cost most of a second to import)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("alembic", "sqlalchemy", "mako", "pygments")


@pytest.mark.parametrize("module", ["pgqueue", "pgqueue.cli", "service"])
def test_import_does_not_load_the_migration_stack(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(' '.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"import {module} loaded {out}"


def test_head_revision_still_loads_alembic_when_asked() -> None:
    code = "import pgqueue\nprint(pgqueue.head_revision())\n"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert len(out) == 4 and out.isdigit(), out
