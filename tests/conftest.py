import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from blackbox import Daemon, FakeITSP  # noqa: E402


@pytest.fixture
def make_daemon(tmp_path):
    """make_daemon(websms=..., websmsd=..., astqueue=..., daemon=...) -> started Daemon."""
    started = []

    def make(start=True, **sections):
        d = Daemon(tmp_path / f"d{len(started)}", **sections) if started else Daemon(tmp_path, **sections)
        started.append(d)
        return d.start() if start else d

    yield make
    for d in started:
        d.stop()


@pytest.fixture
def fake_itsp():
    itsp = FakeITSP()
    yield itsp
    itsp.close()
