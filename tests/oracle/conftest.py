"""Shared fixtures for the oracle tests: where the qtrain binary and ../shared/data are, and a runner."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def qtrain_bin() -> Path:
    p = Path(os.environ.get("QTRAIN_BINARY", ROOT / "build" / "qtrain"))
    if not p.exists():
        pytest.fail(f"qtrain binary not found at {p} (build first, or set QTRAIN_BINARY)")
    return p


@pytest.fixture(scope="session")
def shared_data() -> Path:
    p = Path(os.environ.get("QTRAIN_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not p.is_dir():
        pytest.skip(f"shared test data not found at {p}: tests on real artifacts skipped")
    return p


@pytest.fixture(scope="session")
def run_qtrain(qtrain_bin):
    def run(*args, check=True):
        r = subprocess.run([str(qtrain_bin), *map(str, args)], capture_output=True, text=True)
        if check and r.returncode != 0:
            raise AssertionError(f"qtrain {' '.join(map(str, args))} exited {r.returncode}:\n{r.stderr}")
        return r
    return run
