"""Where a webhook's fields are: keys and paths read safely from a decoded request.

Pure Python: no Twisted.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, Dict, List, Optional, Sequence, Tuple

from websmsd.itsp.body import EXPANDED as _EXPANDED
from websmsd.itsp.body import FieldError, Tree
from websmsd.text import shown


class DuplicateField(FieldError):
    """A key the message is read from appears more than once where it was found."""


# Where a value was found: the container holding it and its key there.
_Place = Tuple[int, Any]


class View:
    """One event of a request, read the way an interface says.

    Keys are looked up the way a mature reader of untrusted input must, not the way the
    PHP websmsd.php did (which walked every leaf and took the last match, so that an SMS
    whose text is JSON could name its own sender):

    - the text is found first (`opaque`, the interface's key_body) and its value is
      opaque: nothing is ever looked up inside it, whatever it holds (JSON, a form);
    - a key with a dot is a path from the root (``data.payload.to.0.phone_number``;
      through JSON-encoded string values too, as Zadarma's ``result.caller_did``);
    - a plain key is the shallowest match at any depth (``exact``: at the root only);
      when it appears more than once at that depth, the request is refused rather than
      guessed (DuplicateField), and so is a form or JSON object that repeats it;
    - a key whose value is an object or array never matches, unless that value was
      decoded from a string (see expand_json_strings): it reads as that string.
    """

    __slots__ = ("tree", "exact", "_skip", "_opaque", "_opaque_place")

    def __init__(self, tree: Tree, opaque: Optional[str] = None, exact: bool = False):
        self.tree = tree
        self.exact = exact
        self._skip: Optional[_Place] = None
        self._opaque = opaque
        self._opaque_place = None
        if opaque is not None:
            place = self._opaque_place = self._place(opaque)
            if place is not None:
                self._skip = (id(place[0]), place[1])

    def get(self, key: str) -> Optional[str]:
        """The text at `key`, or None."""
        place = self._opaque_place if key == self._opaque else self._place(key)
        if place is None:
            return None
        value = place[0][place[1]]
        return value.text if isinstance(value, _EXPANDED) else _text(value)

    def values(self, keys: Sequence[str]) -> Dict[str, Optional[str]]:
        return {key: self.get(key) for key in keys}

    def all(self, pattern: str) -> List[str]:
        """Every text `pattern` reaches, in document order.

        A part of the dotted pattern may be ``*`` or a glob (``MediaUrl*``) matching any
        key or array index; a path that ends at an array yields its texts.  A pattern
        without wildcards that reaches nothing is looked up like `get`.
        """
        nodes: List[Any] = [self.tree]
        skip = self._skip
        for part in pattern.split("."):
            glob = not _GLOB.isdisjoint(part)
            reached: List[Any] = []
            for node in nodes:
                if isinstance(node, dict):
                    pairs = [(k, v) for k, v in node.items() if fnmatchcase(k, part)] if glob else (
                        [(part, node[part])] if part in node else [])
                elif isinstance(node, list):
                    if glob:
                        pairs = [(i, v) for i, v in enumerate(node) if fnmatchcase(str(i), part)]
                    elif part.isdigit() and part.isascii() and int(part) < len(node):
                        pairs = [(int(part), node[int(part)])]
                    else:
                        pairs = []
                else:
                    continue
                reached.extend(v for k, v in pairs if skip is None or (id(node), k) != skip)
            nodes = reached
            if not nodes:
                break
        found: List[str] = []
        for node in nodes:
            if isinstance(node, list):
                found.extend(v for v in node if isinstance(v, str))
            elif isinstance(node, str):
                found.append(node)
        if not found and _GLOB.isdisjoint(pattern):
            value = self.get(pattern)
            if value:
                found.append(value)
        return found

    def matches(self, rule: str) -> bool:
        """Whether the event matches a filter: ``path=value`` (the text at path equals
        value) or ``path`` (the text at path is present and not empty)."""
        path, equals, value = rule.partition("=")
        found = self.get(path)
        if equals:
            return found == value
        return bool(found)

    # -- where a key is -----------------------------------------------------------------

    def _place(self, key: str) -> Optional[Tuple[Any, Any]]:
        if "." in key:
            place = self._path(key)
            if place is not None or self.exact:
                return place
        return self._shallowest(key)

    def _path(self, path: str) -> Optional[Tuple[Any, Any]]:
        node: Any = self.tree
        place = None
        skip = self._skip
        for step in path.split("."):
            if isinstance(node, dict):
                if step not in node:
                    return None
                key: Any = step
            elif isinstance(node, list):
                if not (step.isdigit() and step.isascii()) or int(step) >= len(node):
                    return None
                key = int(step)
            else:
                return None
            if skip is not None and (id(node), key) == skip:
                return None  # a path into the text: the text is opaque
            _refuse_repeated(node, key)
            place = (node, key)
            node = node[key]
        if place is None or (isinstance(node, (dict, list)) and not isinstance(node, _EXPANDED)):
            return None
        return place

    def _shallowest(self, name: str) -> Optional[Tuple[Any, Any]]:
        tree = self.tree
        if isinstance(tree, dict):
            # The common case, a flat form or object: a match at the root is the
            # shallowest, and a dict holds a key once (`repeated` says if it was sent twice).
            if name in tree and (self._skip is None or self._skip != (id(tree), name)):
                value = tree[name]
                if not isinstance(value, (dict, list)) or isinstance(value, _EXPANDED):
                    if tree.__class__ is not dict:
                        _refuse_repeated(tree, name)
                    return (tree, name)
        elif not isinstance(tree, list):
            return None
        skip = self._skip
        level: List[Any] = [tree]
        while level:
            found: List[Tuple[Any, Any]] = []
            deeper: List[Any] = []
            for node in level:
                if isinstance(node, dict):
                    if name in node and (skip is None or (id(node), name) != skip):
                        value = node[name]
                        if not isinstance(value, (dict, list)) or isinstance(value, _EXPANDED):
                            _refuse_repeated(node, name)
                            found.append((node, name))
                    if self.exact:
                        continue
                    for key, value in node.items():
                        if isinstance(value, (dict, list)) and (skip is None or (id(node), key) != skip):
                            deeper.append(value)
                elif not self.exact:
                    deeper.extend(v for v in node if isinstance(v, (dict, list)))
            if len(found) > 1:
                raise DuplicateField(
                    f"{shown(name, 42)} appears {len(found)} times at the same depth:"
                    " refused rather than guessed"
                )
            if found:
                return found[0]
            if self.exact:
                return None
            level = deeper
        return None


def _refuse_repeated(node: Any, key: Any) -> None:
    repeated = getattr(node, "repeated", None)
    if repeated and key in repeated:
        raise DuplicateField(f"{shown(str(key), 42)} is given more than once: refused rather than guessed")


def find(tree: Tree, key: str) -> Optional[str]:
    """The text of `key` in `tree`, or None (`View` says how keys are found)."""
    return View(tree).get(key)


_GLOB = frozenset("*?[")


def find_all(tree: Tree, pattern: str) -> List[str]:
    """Every text `pattern` reaches in `tree`, in document order (see View.all)."""
    return View(tree).all(pattern)


def _text(value: Any) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)
