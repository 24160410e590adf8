"""How ``@idempotent`` stores a function's result and gives it back to duplicates, types intact.

:class:`JsonCodec` (the default) writes JSON. Values JSON has no type for are written as tagged
objects ``{"__fr__": <tag>, ...}`` so a replay returns the same types: ``tuple``, ``set``,
``frozenset``, ``Decimal``, ``datetime``/``date``/``time``/``timedelta``, ``UUID``, ``bytes``,
``Enum`` members, dataclasses, ``NamedTuple``\\ s and Pydantic models (dumped in JSON mode, rebuilt
with ``model_validate``, as AWS Powertools' ``PydanticSerializer`` does; dataclasses field by
field, as its ``DataclassSerializer`` does).

Classes are rebuilt only when the decorated function's return annotation names them (directly, or
inside ``list[...]``, ``X | None``, a dataclass field, ...) or when they are given in
``JsonCodec(types=...)``: a stored record never chooses which class is instantiated. A return
annotation the codec cannot store (a plain class, a generator) is refused when the function is
decorated (:class:`~fintech_resilience.ConfigurationError`), before any money moves.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import json
import types
import typing
import uuid
from collections import abc
from collections.abc import Iterable
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigurationError

__all__ = ["JsonCodec", "ResultCodec", "return_annotation"]

_TAG = "__fr__"
_SCALARS: tuple[type, ...] = (str, int, float, bool, type(None))
_TAGGED_SCALARS: tuple[type, ...] = (Decimal, dt.datetime, dt.date, dt.time, dt.timedelta,
                                     uuid.UUID, bytes)
_CONTAINERS = {list, tuple, set, frozenset, dict}
_ABSTRACT_CONTAINERS = {
    abc.Sequence, abc.MutableSequence, abc.Mapping, abc.MutableMapping, abc.Set, abc.MutableSet,
    abc.Collection, abc.Iterable,
}


@runtime_checkable
class ResultCodec(Protocol):
    """What ``@idempotent(codec=...)`` needs: bytes for a result, and the result back.

    ``for_return`` is called once, when a function is decorated, with its return annotation
    (``inspect.Signature.empty`` when it has none): return the codec to use for that function,
    or raise :class:`~fintech_resilience.ConfigurationError` when its results cannot be stored.
    ``dumps`` raises ``TypeError``/``ValueError`` for a value it cannot store; ``loads`` raises
    any exception for bytes it cannot rebuild.
    """

    def for_return(self, annotation: Any) -> ResultCodec:
        """The codec for a function whose return annotation is ``annotation``."""
        ...

    def dumps(self, value: Any) -> bytes:
        """Serialise ``value``."""
        ...

    def loads(self, data: bytes) -> Any:
        """Inverse of :meth:`dumps`."""
        ...


def return_annotation(fn: Any) -> Any:
    """``fn``'s return annotation, string annotations resolved; ``Signature.empty`` when it has
    none or it cannot be resolved (a name only imported for type checking)."""
    import inspect

    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # a forward reference that does not resolve at run time
        return inspect.Signature.empty
    return hints.get("return", inspect.Signature.empty)


def _name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _is_pydantic(cls: type) -> bool:
    return any(f"{c.__module__}.{c.__qualname__}" == "pydantic.main.BaseModel" for c in cls.__mro__)


def _is_namedtuple(cls: type) -> bool:
    return issubclass(cls, tuple) and hasattr(cls, "_fields")


class JsonCodec:
    """The default codec: JSON, with tags that keep Python types on replay.

    :param types: classes (dataclasses, Pydantic models, NamedTuples, Enums) that may be rebuilt
        even when no return annotation names them (e.g. for ``-> Any``).

    Datetimes keep their UTC offset (a ``ZoneInfo`` comes back as the fixed offset it had).
    Dict keys that are not strings, and dicts that use the key ``"__fr__"``, are stored as pairs.
    """

    __slots__ = ("_by_name", "types")

    def __init__(self, *, types: Iterable[type] = ()) -> None:
        found: set[type] = set()
        for cls in types:
            if not isinstance(cls, type):
                raise ConfigurationError(f"types lists classes; got {cls!r}")
            _collect(cls, found, f"JsonCodec(types=...) entry {cls.__qualname__}")
        self.types = frozenset(found)
        self._by_name = {_name(cls): cls for cls in self.types}

    # -- decoration time -------------------------------------------------------------------------
    def for_return(self, annotation: Any) -> JsonCodec:
        """This codec, also allowed to rebuild the classes ``annotation`` names; raise
        ConfigurationError if it names a type this codec cannot store."""
        import inspect

        if annotation is inspect.Signature.empty:
            return self
        found: set[type] = set()
        _collect(annotation, found, "the return annotation")
        return self if found <= self.types else JsonCodec(types=self.types | found)

    # -- storing ---------------------------------------------------------------------------------
    def dumps(self, value: Any) -> bytes:
        """Compact JSON of ``value``; TypeError for a value this codec cannot rebuild."""
        return json.dumps(self._encode(value), separators=(",", ":"),
                          ensure_ascii=False).encode()

    def _encode(self, value: Any) -> Any:
        cls = type(value)
        if cls in (str, int, float, bool) or value is None:
            return value
        if cls is list:
            return [self._encode(v) for v in value]
        if cls is dict:
            if all(type(k) is str for k in value) and _TAG not in value:
                return {k: self._encode(v) for k, v in value.items()}
            return {_TAG: "dict", "v": [[self._encode(k), self._encode(v)]
                                        for k, v in value.items()]}
        if cls is tuple:
            return {_TAG: "tuple", "v": [self._encode(v) for v in value]}
        if cls is set or cls is frozenset:
            return {_TAG: cls.__name__, "v": [self._encode(v) for v in value]}
        if cls is Decimal:
            return {_TAG: "decimal", "v": str(value)}
        if cls is dt.datetime:
            return {_TAG: "datetime", "v": value.isoformat()}
        if cls is dt.date:
            return {_TAG: "date", "v": value.isoformat()}
        if cls is dt.time:
            return {_TAG: "time", "v": value.isoformat()}
        if cls is dt.timedelta:
            return {_TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
        if cls is uuid.UUID:
            return {_TAG: "uuid", "v": str(value)}
        if cls is bytes:
            return {_TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
        name = _name(cls)
        if self._by_name.get(name) is not cls:
            raise TypeError(
                f"{cls.__qualname__} cannot be rebuilt on replay: name it in the function's"
                f" return annotation or in JsonCodec(types=...)" if _rebuildable(cls) else
                f"{cls.__qualname__} is not a type this codec stores (JSON types, Decimal,"
                f" datetime, UUID, bytes, tuple, set, Enum, dataclass, NamedTuple, Pydantic)")
        if isinstance(value, enum.Enum):
            return {_TAG: "enum", "t": name, "v": self._encode(value.value)}
        if _is_namedtuple(cls):
            return {_TAG: "namedtuple", "t": name, "v": [self._encode(v) for v in value]}
        if dataclasses.is_dataclass(value):
            fields = {f.name: self._encode(getattr(value, f.name))
                      for f in dataclasses.fields(value) if f.init}
            return {_TAG: "dataclass", "t": name, "v": fields}
        return {_TAG: "pydantic", "t": name, "v": value.model_dump(mode="json")}

    # -- replaying -------------------------------------------------------------------------------
    def loads(self, data: bytes) -> Any:
        """The value :meth:`dumps` stored (also reads plain JSON written by earlier versions)."""
        return self._decode(json.loads(data))

    def _decode(self, value: Any) -> Any:
        if type(value) is list:
            return [self._decode(v) for v in value]
        if type(value) is not dict:
            return value
        tag = value.get(_TAG)
        if tag is None:
            return {k: self._decode(v) for k, v in value.items()}
        v = value["v"]
        if tag == "dict":
            return {self._decode(k): self._decode(item) for k, item in v}
        if tag in ("tuple", "set", "frozenset"):
            return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](
                self._decode(item) for item in v)
        simple = _SIMPLE.get(tag)
        if simple is not None:
            return simple(v)
        cls = self._by_name.get(value["t"])
        if cls is None:
            raise TypeError(f"the stored result names {value['t']!r}, which this function's"
                            f" codec may not rebuild")
        if tag == "enum":
            return cls(self._decode(v))
        if tag == "namedtuple":
            return cls(*(self._decode(item) for item in v))
        if tag == "dataclass":
            return cls(**{k: self._decode(item) for k, item in v.items()})
        if tag == "pydantic":
            return cls.model_validate(v)  # type: ignore[attr-defined]
        raise TypeError(f"unknown stored tag {tag!r}")

    def __repr__(self) -> str:
        names = ", ".join(sorted(cls.__qualname__ for cls in self.types))
        return f"JsonCodec(types=[{names}])" if names else "JsonCodec()"


_SIMPLE: dict[str, Any] = {
    "decimal": Decimal,
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": lambda v: dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "uuid": uuid.UUID,
    "bytes": lambda v: base64.b64decode(v.encode("ascii")),
}


def _hints(cls: type) -> list[Any]:
    try:
        return list(typing.get_type_hints(cls).values())
    except Exception:  # a forward reference that does not resolve at run time
        return []


def _rebuildable(cls: type) -> bool:
    return (issubclass(cls, enum.Enum) or _is_namedtuple(cls) or dataclasses.is_dataclass(cls)
            or _is_pydantic(cls))


def _collect(annotation: Any, found: set[type], where: str) -> None:
    """Add the classes ``annotation`` needs rebuilt to ``found``; ConfigurationError for a type
    :class:`JsonCodec` cannot store."""
    if annotation in (Any, object) or isinstance(annotation, typing.TypeVar):
        return  # anything: checked when a value is stored
    if annotation is None or annotation in _SCALARS or annotation in _TAGGED_SCALARS:
        return
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        _collect(typing.get_args(annotation)[0], found, where)
        return
    if origin is typing.Literal:
        return
    if origin in (typing.Union, types.UnionType) or origin in _CONTAINERS or (
            origin in _ABSTRACT_CONTAINERS):
        for arg in typing.get_args(annotation):
            if arg is not Ellipsis:
                _collect(arg, found, where)
        return
    if annotation in _CONTAINERS:
        return
    if isinstance(annotation, type) and typing.is_typeddict(annotation):
        for hint in _hints(annotation):
            _collect(hint, found, where)
        return
    if isinstance(annotation, type) and _rebuildable(annotation):
        if annotation in found:
            return
        found.add(annotation)
        if not issubclass(annotation, enum.Enum) and not _is_pydantic(annotation):
            for hint in _hints(annotation):  # a dataclass's fields may hold rebuilt classes
                _collect(hint, found, f"{where}: {annotation.__qualname__}'s fields")
        return
    shown = getattr(annotation, "__qualname__", None) or repr(annotation)
    raise ConfigurationError(
        f"@idempotent results are stored and replayed, but {where} ({shown}) is not a type"
        f" JsonCodec can store: use JSON types, Decimal, datetime, UUID, bytes, tuples, sets,"
        f" an Enum, a dataclass, a NamedTuple or a Pydantic model, or pass codec=<your codec>"
    )
