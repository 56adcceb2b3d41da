import sys
from pathlib import Path

import pytest
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from blackbox import Daemon, FakeITSP  # noqa: E402


def fired(d):
    """The result of a Deferred that has fired already (an inline store, StubTreq, a
    task.Clock advanced): its value, or its failure raised."""
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred did not fire"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


@pytest.fixture
def events():
    """The log events of websmsd's own code during the test."""
    captured = []

    def observer(event):
        if event.get("log_namespace", "").startswith("websmsd"):
            captured.append(event)

    globalLogPublisher.addObserver(observer)
    yield captured
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def log():
    """Every log event during the test (Twisted's own too)."""
    captured = []
    globalLogPublisher.addObserver(captured.append)
    yield captured
    globalLogPublisher.removeObserver(captured.append)


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
