"""websmsd.record.frozen behaves as @dataclass(frozen=True) does, with shared methods."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from dataclasses import dataclass, field

import pytest

from websmsd.record import frozen


def _pair():
    """The same class twice: once @dataclass(frozen=True), once @frozen."""
    made = []
    for decorate in (dataclass(frozen=True), frozen):
        ns = {"__annotations__": {"name": "str", "secret": "str", "port": "int",
                                  "tags": "Tuple[str, ...]", "note": "Optional[str]"},
              "name": "x",
              "secret": field(default="", repr=False),
              "port": 0,
              "tags": (),
              "note": field(default=None, compare=False)}
        cls = type("Settings", (), dict(ns, __module__=__name__, __qualname__="Settings"))
        made.append(decorate(cls))
    return made


def test_same_init_repr_eq_hash_as_a_frozen_dataclass():
    generated, shared = _pair()
    for args in [dict(), dict(name="sim1", secret="s3cr3t", port=7777, tags=("a",), note="n")]:
        g, s = generated(**args), shared(**args)
        assert repr(g) == repr(s)
        assert "s3cr3t" not in repr(s)  # field(repr=False) hides a secret
        assert hash(g) == hash(s)
        assert dataclasses.asdict(g) == dataclasses.asdict(s)
    a = shared(name="a", note="one")
    assert a == shared(name="a", note="other")  # compare=False: not compared
    assert hash(a) == hash(shared(name="a", note="other"))
    assert a != shared(name="b")
    assert a != generated(name="a")  # another class: not equal (NotImplemented)
    assert (a == object()) is False
    assert {a, shared(name="a")} == {a}


def test_frozen_as_a_dataclass_is():
    _, shared = _pair()
    s = shared(name="x")
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'name'"):
        s.name = "y"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.other = 1  # not even a new attribute
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot delete field 'port'"):
        del s.port
    assert dataclasses.replace(s, port=5).port == 5 and s.port == 0
    assert dataclasses.is_dataclass(s) and dataclasses.fields(s)[0].name == "name"
    assert copy.deepcopy(s) == s
    kept = Kept("a", ("b",))
    assert pickle.loads(pickle.dumps(kept)) == kept


@frozen
class Kept:
    name: str
    tags: tuple = ()


def test_a_subclass_and_methods_of_its_own():
    @frozen
    class Base:
        a: int = 1

        def __repr__(self) -> str:  # kept, as dataclass keeps it
            return "mine"

    @frozen
    class Child(Base):
        b: int = 2

    class Plain(Child):
        """Not a record: attributes other than the fields may be set."""

    # Child is a record of its own: its repr is the shared one, as dataclass generates one.
    assert repr(Base()) == "mine" and repr(Child()).endswith(".Child(a=1, b=2)")
    assert Child(1, 2) == Child(1, 2) and Child(1, 2) != Child(1, 3)
    assert Base(1) != Child(1)
    p = Plain()
    p.extra = 3
    assert p.extra == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.b = 5

    @frozen
    class OwnEq:
        a: int = 1

        def __eq__(self, other):
            return True

    assert OwnEq(1) == OwnEq(2)
    assert hash(OwnEq(1)) == hash((1,))  # __eq__ alone: hash generated, as dataclass does

    @frozen
    class Empty:
        pass

    assert Empty() == Empty() and hash(Empty()) == hash(()) and repr(Empty()).endswith("Empty()")


def test_recursive_repr_and_unhashable_fields_as_a_dataclass():
    @frozen
    class Holder:
        items: list

    h = Holder([])
    h.items.append(h)
    assert repr(h).endswith(".Holder(items=[...])")
    with pytest.raises(TypeError):
        hash(h)


def test_websmsd_records_share_their_methods():
    from websmsd.config.goip import GoIPSettings

    assert GoIPSettings.__eq__ is frozen.__globals__["_eq"]
    assert GoIPSettings.__repr__ is frozen.__globals__["_repr"]
