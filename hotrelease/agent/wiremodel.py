"""The base of the agent's wire models (`agent.wire`): a strict `from_dict` driven by the
dataclass fields' annotations, `to_dict`, and a read-only Mapping over the JSON.

A field annotated `X | None` may be null or missing; any other is required. A value of the
wrong type, or a missing one, raises `BadResponseError` naming its path
(`plugins[0].health.status: expected a string, got a number`). JSON keys a model does not
name are kept in `unrecognized_fields`, and a parsed model remembers the keys it had, in
order, so `from_dict(d).to_dict() == d` key for key. Standard library only.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, ClassVar, NamedTuple, TypeVar

from hotrelease.errors import BadResponseError

M = TypeVar("M", bound="WireModel")
_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
          list: "an array", dict: "an object"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return next((name for typ, name in _NAMES.items() if isinstance(value, typ)), "a value")


def _optional(hint: Any) -> Any | None:
    """`X` of a hint `X | None`, else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        return rest[0] if len(rest) == 1 else None
    return None


def _parse(hint: Any, value: Any, path: str) -> Any:
    """`value` as `hint` says, or BadResponseError naming `path`."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if isinstance(hint, type) and issubclass(hint, WireModel):
        return hint.from_dict(value, path)
    typ = origin or hint
    ok = isinstance(value, typ) and not (isinstance(value, bool) and typ is not bool)
    if typ is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        raise BadResponseError(f"{path or 'answer'}: expected {_NAMES.get(typ, typ)}, got "
                               f"{_kind(value)}")
    if origin is list:
        (item,) = typing.get_args(hint)
        return [_parse(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(hint)
        return {k: _parse(item, v, f"{path}.{k}") for k, v in value.items()}
    return value


class _Field(NamedTuple):
    attr: str  # the dataclass field
    wire: str  # its JSON key
    hint: Any  # the type inside `| None`, if optional
    required: bool
    omit_none: bool  # a built answer leaves it out when None


def wire_name(name: str, *, default: Any = None, omit_none: bool = False) -> Any:
    """An optional field sent as `name` (a Python keyword, like "from")."""
    return field(default=default, metadata={"wire": name, "omit_none": omit_none})


def omitted_if_none() -> Any:
    """An optional field the agent sends only when it has a value."""
    return field(default=None, metadata={"omit_none": True})


@dataclass(frozen=True, eq=False, kw_only=True)
class WireModel(Mapping[str, Any]):
    """Base of every model: strict `from_dict`, `to_dict`, and the read-only Mapping over it.
    Equality is the Mapping's (the JSON's): a model equals the dict it stands for."""

    unrecognized_fields: dict[str, Any] = field(default_factory=dict)
    # The keys of the JSON it was parsed from, in order (None: built, not parsed).
    keys_seen: tuple[str, ...] | None = field(default=None, repr=False)

    _ORDER: ClassVar[tuple[str, ...] | None] = None  # JSON key order, if not the fields'
    _SPECS: ClassVar[dict[type, list[_Field]]] = {}

    @classmethod
    def _fields(cls) -> list[_Field]:
        specs = WireModel._SPECS.get(cls)
        if specs is None:
            hints = typing.get_type_hints(cls)
            specs = []
            for f in fields(cls):
                if f.name in ("unrecognized_fields", "keys_seen"):
                    continue
                inner = _optional(hints[f.name])
                specs.append(_Field(f.name, f.metadata.get("wire", f.name),
                                    hints[f.name] if inner is None else inner, inner is None,
                                    bool(f.metadata.get("omit_none"))))
            order = cls._ORDER
            if order is not None:
                specs.sort(key=lambda s: order.index(s.wire))
            WireModel._SPECS[cls] = specs
        return specs

    @classmethod
    def from_dict(cls: type[M], data: Any, where: str = "") -> M:
        if not isinstance(data, dict):
            raise BadResponseError(f"{where or 'answer'}: expected an object, got "
                                   f"{_kind(data)}")
        values: dict[str, Any] = {}
        for spec in cls._fields():
            path = f"{where}.{spec.wire}" if where else spec.wire
            value = data.get(spec.wire)
            if value is None and spec.required:
                raise BadResponseError(f"{path}: " + ("expected a value, got null"
                                                      if spec.wire in data else "missing"))
            values[spec.attr] = None if value is None else _parse(spec.hint, value, path)
        known = {spec.wire for spec in cls._fields()}
        return cls(**values, unrecognized_fields={k: v for k, v in data.items()
                                                  if k not in known},
                   keys_seen=tuple(data))

    def _absent(self) -> set[str]:
        """JSON keys a built answer leaves out."""
        return {s.wire for s in self._fields() if s.omit_none and getattr(self, s.attr) is None}

    def to_dict(self) -> dict[str, Any]:
        out = {s.wire: _out(getattr(self, s.attr)) for s in self._fields()}
        out.update(self.unrecognized_fields)
        if self.keys_seen is not None:
            return {key: out[key] for key in self.keys_seen}
        absent = self._absent()
        return {key: value for key, value in out.items() if key not in absent}

    @cached_property
    def _wire(self) -> dict[str, Any]:
        return self.to_dict()

    def __getitem__(self, key: str) -> Any:
        return self._wire[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._wire)

    def __len__(self) -> int:
        return len(self._wire)


def _out(value: Any) -> Any:
    if isinstance(value, WireModel):
        return value.to_dict()
    if isinstance(value, list):
        return [_out(v) for v in value]
    return value
