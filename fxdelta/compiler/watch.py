"""Watch which instance attributes one call reads.

Python looks a name up on the class first, and a *data* descriptor found there wins over the instance's
own ``__dict__``. So for the call's duration each watched name gets a ``_Watched`` descriptor on the
instance's class, which answers every read exactly as lookup would without it (the instance's value, else
the class attribute it shadows, else ``AttributeError``, and then ``__getattr__``) and notes reads made on
a watched instance. Code can also read the dict itself (``vars(self)``, ``self.__dict__[name]``): each
watched instance gets, for the call, a copy of its dict whose Python-level reads note what they read
(anything that iterates it notes ``ALL``); C-level attribute lookup ignores those methods, which is what the
descriptors are for. Everything is put back when the call ends, however it ends, the original dict
objects included (with what the call wrote into their copies).

Classes are process-wide: other instances of a watched class, in any thread, read what they read without
it (a ``torch.compile``d forward of one may recompile once, as for any change to its class). One call at
a time watches (a lock, never waited for: a call that cannot take it is not watched, and the caller
treats every name as read). torch's own classes and names that cannot be watched faithfully (dunder
names, names a data descriptor of the class already owns) are never watched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import nn

ALL = "__dict__"  # noted for an instance whose whole dict was read: any of its attributes may have been
_MISSING = object()
_LOCK = threading.Lock()


class _Session:
    """One watched call: what was read, and the class attributes the descriptors stand in front of."""

    def __init__(self, watched: Mapping[nn.Module, set[str]]) -> None:
        self.reads: dict[int, set[str]] = {id(m): set() for m in watched}
        self.shadowed: dict[tuple[type, str], Any] = {}  # (class, name) -> its own entry, or _MISSING

    def note(self, obj: object, name: str) -> None:
        reads = self.reads.get(id(obj))
        if reads is not None:
            reads.add(name)

    def lookup(self, cls: type, name: str) -> Any:
        """``name``'s entry on ``cls`` or its bases as it was before this session (``_MISSING`` if none)."""
        for klass in cls.__mro__:
            entry = self.shadowed.get((klass, name), klass.__dict__.get(name, _MISSING))
            if entry is not _MISSING:
                return entry
        return _MISSING


class _Watched:
    """Stands in front of ``name`` on one class while a session lasts; reads as lookup would."""

    def __init__(self, session: _Session, name: str) -> None:
        self.session, self.name = session, name

    def __get__(self, obj: object, cls: type | None = None) -> Any:
        if obj is not None:
            values = obj.__dict__
            if dict.__contains__(values, self.name):
                self.session.note(obj, self.name)
                return dict.__getitem__(values, self.name)
        owner = type(obj) if obj is not None else cls
        entry = self.session.lookup(owner, self.name) if owner is not None else _MISSING
        if entry is _MISSING:
            raise AttributeError(self.name)  # for an instance, Python then calls __getattr__, as it would have
        getter = getattr(type(entry), "__get__", None)
        return getter(entry, obj, owner) if getter is not None else entry

    def __set__(self, obj: object, value: Any) -> None:
        dict.__setitem__(obj.__dict__, self.name, value)

    def __delete__(self, obj: object) -> None:
        values = obj.__dict__
        if not dict.__contains__(values, self.name):
            raise AttributeError(self.name)
        dict.__delitem__(values, self.name)


def _reads_all(name: str) -> Callable[..., Any]:
    """``dict.<name>``, noting that the whole dict was read."""
    method = getattr(dict, name)

    def read(self: _WatchedDict, *args: Any, **kwargs: Any) -> Any:
        self._note(ALL)
        return method(self, *args, **kwargs)

    read.__name__ = name
    return read


class _WatchedDict(dict):
    """A watched instance's ``__dict__`` for the call: Python-level reads note the names they read."""

    def __init__(self, values: dict[str, Any], session: _Session, owner: object) -> None:
        super().__init__(values)
        self._note = lambda name: session.note(owner, name)

    def __getitem__(self, key: Any) -> Any:
        self._note(key)
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self._note(key)
        return super().get(key, default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._note(key)
        return super().setdefault(key, default)

    def pop(self, key: Any, *default: Any) -> Any:
        self._note(key)
        return super().pop(key, *default)

    __iter__ = _reads_all("__iter__")
    __reversed__ = _reads_all("__reversed__")
    __repr__ = _reads_all("__repr__")
    __eq__ = _reads_all("__eq__")
    __ne__ = _reads_all("__ne__")
    __or__ = _reads_all("__or__")
    __reduce_ex__ = _reads_all("__reduce_ex__")
    keys = _reads_all("keys")
    values = _reads_all("values")
    items = _reads_all("items")
    copy = _reads_all("copy")
    popitem = _reads_all("popitem")


def watchable(cls: type, name: str) -> bool:
    """Whether reads of the instance attribute ``name`` on ``cls`` can be watched faithfully."""
    if cls.__module__.split(".")[0] == "torch" or (name.startswith("__") and name.endswith("__")):
        return False
    for klass in cls.__mro__:
        entry = klass.__dict__.get(name, _MISSING)
        if entry is not _MISSING:
            return not (hasattr(type(entry), "__set__") or hasattr(type(entry), "__delete__"))
    return True


@contextmanager
def watching(watched: Mapping[nn.Module, set[str]]) -> Iterator[dict[int, set[str]] | None]:
    """For the body, note reads of ``watched`` attribute names on those modules: yields ``{id(module): names
    read}`` (``ALL`` among them if its whole dict was read), or None if it cannot watch them all (another call
    is watching, or a name is not ``watchable``)."""
    names: dict[type, set[str]] = {}
    for module, attrs in watched.items():
        names.setdefault(type(module), set()).update(attrs)
    if any(not watchable(cls, n) for cls, ns in names.items() for n in ns) or not _LOCK.acquire(blocking=False):
        yield None
        return
    session = _Session(watched)
    installed: list[tuple[type, str]] = []
    swapped: list[tuple[nn.Module, dict[str, Any]]] = []

    def put_back() -> None:
        for module, own in reversed(swapped):
            own.clear()
            own.update(dict.items(module.__dict__))  # what the call wrote, into the dict object others may hold
            object.__setattr__(module, "__dict__", own)
        for cls, name in reversed(installed):
            entry = session.shadowed[(cls, name)]
            if entry is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, entry)
        _LOCK.release()

    try:
        for cls, ns in names.items():
            for name in sorted(ns):
                session.shadowed[(cls, name)] = cls.__dict__.get(name, _MISSING)
                setattr(cls, name, _Watched(session, name))
                installed.append((cls, name))
        for module in watched:
            own = module.__dict__
            object.__setattr__(module, "__dict__", _WatchedDict(own, session, module))
            swapped.append((module, own))
    except Exception:  # a class that refuses new attributes (its metaclass): not watched
        put_back()
        yield None
        return
    try:
        yield session.reads
    finally:
        put_back()
