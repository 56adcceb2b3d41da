"""Frozen records: frozen dataclasses whose methods are shared, not generated per class.

`@dataclass(frozen=True)` compiles five methods for every class (__repr__, __eq__,
__hash__, __setattr__, __delattr__) besides __init__: about 7 KB of code objects a
class, 0.7 MB of a Raspberry Pi's memory for websmsd's hundred records with every
channel configured (issue #18).  `@frozen` keeps the dataclass's own __init__ (fast, and
what dataclasses.fields, replace and asdict read) and gives every record the same five
methods, which behave as the generated ones do: equality and hash over the fields
compared (`field(compare=False)` left out), a repr of the fields shown (`field(repr=False)`
hides a secret), FrozenInstanceError on assignment.  Methods a class defines itself are
kept, as dataclasses keeps them.
"""

from __future__ import annotations

import dataclasses
import reprlib
from operator import attrgetter
from typing import Any, Callable, Tuple, TypeVar

T = TypeVar("T")

__all__ = ["frozen"]


def _getter(names: Tuple[str, ...]) -> Callable[[Any], tuple]:
    """obj -> the tuple of its `names` attributes (attrgetter, which gives a bare value
    for one name and wants at least one)."""
    if len(names) > 1:
        return attrgetter(*names)
    if names:
        one = attrgetter(names[0])
        return lambda obj: (one(obj),)
    return lambda obj: ()


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is self.__class__:
        key = self.__class__.__record_compare__
        return key(self) == key(other)
    return NotImplemented


def _hash(self: Any) -> int:
    return hash(self.__class__.__record_hash__(self))


@reprlib.recursive_repr()
def _repr(self: Any) -> str:
    cls = self.__class__
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in cls.__record_repr__)
    return f"{cls.__qualname__}({shown})"


def _setattr(self: Any, name: str, value: Any) -> None:
    cls = type(self)
    if "__record_fields__" in cls.__dict__ or name in cls.__record_fields__:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
    object.__setattr__(self, name, value)


def _delattr(self: Any, name: str) -> None:
    cls = type(self)
    if "__record_fields__" in cls.__dict__ or name in cls.__record_fields__:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
    object.__delattr__(self, name)


def frozen(cls: type) -> type:
    """`@dataclass(frozen=True)` with shared methods (see the module's docstring)."""
    own = dict(cls.__dict__)
    # A class defining __eq__ without __hash__ has __hash__ = None in its dict: as for
    # dataclasses, that is no hash of its own.
    own_hash = "__hash__" in own and not (own["__hash__"] is None and "__eq__" in own)
    cls = dataclasses.dataclass(cls, frozen=True, repr=False, eq=False)
    fields = dataclasses.fields(cls)
    cls.__record_fields__ = frozenset(f.name for f in fields)
    cls.__record_compare__ = staticmethod(_getter(tuple(f.name for f in fields if f.compare)))
    cls.__record_hash__ = staticmethod(_getter(tuple(
        f.name for f in fields if (f.compare if f.hash is None else f.hash))))
    cls.__record_repr__ = tuple(f.name for f in fields if f.repr)
    # dataclass generated these two for frozen=True: the shared ones replace them (and
    # the generated code is freed).
    cls.__setattr__ = _setattr
    cls.__delattr__ = _delattr
    if "__repr__" not in own:
        cls.__repr__ = _repr
    if "__eq__" not in own:
        cls.__eq__ = _eq
    if not own_hash:
        cls.__hash__ = _hash
    return cls
