"""The [astqueue] values in a call file are checked once per settings, not per file.

A round of call files renders hundreds of them in the spool thread, which shares the
GIL with the reactor; checking every value character by character for each file was
most of the rendering.  What a file says, and what is refused, must not change.
"""

import dataclasses

import pytest

from websmsd.asterisk import callfile
from websmsd.asterisk.callfile import render, split_body
from websmsd.config import AstQueueSettings

TO = "+15015550199"
FROM = "+15015550100"


def lines(data: bytes) -> list:
    return data.decode().splitlines()


def test_each_settings_writes_its_own_values():
    a = AstQueueSettings(channel_context="ctx-a", context="in-a", waittime="11", account="acc")
    b = dataclasses.replace(a, channel_context="ctx-b", context="in-b", account=None,
                            application="MessageSend", data="pjsip:x")
    first, second, again = render(a, TO, FROM, "hi"), render(b, TO, FROM, "hi"), render(a, TO, FROM, "hi")
    assert first == again
    assert lines(first)[:8] == [f"Channel: Local/{TO}@ctx-a", f'CallerID: "" <{FROM}>',
                                "WaitTime: 11", "MaxRetries: 0", "RetryTime: 300",
                                "Account: acc", "Context: in-a", f"Extension: {TO}"]
    assert lines(second)[:9] == [f"Channel: Local/{TO}@ctx-b", f'CallerID: "" <{FROM}>',
                                 "WaitTime: 11", "MaxRetries: 0", "RetryTime: 300",
                                 "Application: MessageSend", "Data: pjsip:x", "Context: in-b",
                                 f"Extension: {TO}"]


@pytest.mark.parametrize("field", ["channel_context", "context", "priority", "message_encode",
                                   "data"])
def test_a_control_character_is_refused_every_time(field):
    q = dataclasses.replace(AstQueueSettings(), **{field: "bad\nApplication: System"})
    for _ in range(3):
        with pytest.raises(ValueError, match=field):
            render(q, TO, FROM, "hi")
        with pytest.raises(ValueError, match=field):
            split_body(q, TO, FROM, "hi")


def test_unsafe_numbers_are_still_checked_for_every_file():
    q = AstQueueSettings(context="numbers-check")
    render(q, TO, FROM, "fine")
    with pytest.raises(ValueError):
        render(q, TO + "\nApplication: System", FROM, "hi")
    with pytest.raises(ValueError):
        render(q, TO, FROM + ";x", "hi")


def test_settings_are_checked_once_for_many_files(monkeypatch):
    checked = []
    real = callfile._config

    def counting(name, value):
        checked.append(name)
        return real(name, value)

    monkeypatch.setattr(callfile, "_config", counting)
    q = AstQueueSettings(context="checked-once", account="a1")
    for i in range(50):
        split_body(q, TO, FROM, f"message {i}")
        render(q, TO, FROM, f"message {i}")
    assert sorted(checked) == sorted(["channel_context", "waittime", "maxretries", "retrytime",
                                      "account", "context", "priority", "archive",
                                      "message_encode"])


def test_settings_that_cannot_be_hashed_are_checked_each_time():
    class Loose:  # a stand-in with the same attributes, as some callers' tests use
        __hash__ = None

    loose = Loose()
    loose.__dict__.update(dataclasses.asdict(AstQueueSettings(context="loose")))
    with pytest.raises(TypeError):
        hash(loose)
    assert render(loose, TO, FROM, "hi") == render(AstQueueSettings(context="loose"), TO, FROM,
                                                   "hi")
