"""Strict, path-aware reading of TOML tables into typed values.

Every config loader (project `hotrelease.toml`, agent `agent.toml`, inventory) reads through
`Table`, so all of them report errors the same way: file, key path, what was expected, and
unknown keys are refused instead of silently ignored.
"""

from __future__ import annotations

import builtins
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from hotrelease.errors import ConfigError, HotreleaseError

T = TypeVar("T")
_MISSING: Any = object()

_TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean", float: "a number",
               list: "an array", dict: "a table"}


def _describe(value: Any) -> str:
    for typ, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                      (list, "array"), (dict, "table")):
        if isinstance(value, typ):
            return name
    return type(value).__name__


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


class Table:
    """A view of one TOML table that remembers where it came from.

    Read keys with the typed getters, then call `finish()`: any key nobody asked for is an
    error (a typo like `treshold` must not silently fall back to a default).
    """

    def __init__(self, data: dict[builtins.str, Any], source: builtins.str | Path,
                 path: tuple[builtins.str, ...] = ()):
        self.data = data
        self.source = str(source)
        self.path = path
        self._seen: set[builtins.str] = set()

    # --- error helpers ------------------------------------------------------------------
    def where(self, key: builtins.str | None = None) -> builtins.str:
        parts = list(self.path) + ([key] if key is not None else [])
        return " -> ".join(parts) if parts else "(top level)"

    def error(self, key: builtins.str | None, message: builtins.str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.where(key)}: {message}")

    # --- getters ------------------------------------------------------------------------
    def has(self, key: builtins.str) -> builtins.bool:
        return key in self.data

    def get(self, key: builtins.str, typ: type[T], default: Any = _MISSING) -> T:
        self._seen.add(key)
        if key not in self.data:
            if default is _MISSING:
                raise self.error(key, f"missing required key (expected {_TYPE_NAMES[typ]})")
            return default  # type: ignore[no-any-return]
        value = self.data[key]
        ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise self.error(key, f"expected {_TYPE_NAMES[typ]}, got {_describe(value)} {value!r}")
        return value  # type: ignore[no-any-return]

    def str(self, key: builtins.str, default: Any = _MISSING, *,
            choices: tuple[builtins.str, ...] = (), nonempty: builtins.bool = True) -> builtins.str:
        value = self.get(key, str, default)
        if value is default and key not in self.data:
            return cast(builtins.str, value)
        if nonempty and value == "":
            raise self.error(key, "must not be empty")
        if choices and value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def int(self, key: builtins.str, default: Any = _MISSING, *, min: builtins.int | None = None,
            max: builtins.int | None = None) -> builtins.int:
        value = self.get(key, int, default)
        if key in self.data:
            if min is not None and value < min:
                raise self.error(key, f"expected an integer >= {min}, got {value}")
            if max is not None and value > max:
                raise self.error(key, f"expected an integer <= {max}, got {value}")
        return value

    def float(self, key: builtins.str, default: Any = _MISSING, *,
              min: builtins.float | None = None) -> builtins.float:
        value = self.get(key, float, default)
        if key in self.data and min is not None and value < min:
            raise self.error(key, f"expected a number >= {min}, got {value}")
        return value

    def bool(self, key: builtins.str, default: Any = _MISSING) -> builtins.bool:
        return self.get(key, bool, default)

    def str_list(self, key: builtins.str, default: Any = _MISSING) -> list[builtins.str]:
        value = self.get(key, list, default)
        if key not in self.data:
            return cast(list[builtins.str], value)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{key}[{i}]",
                                 f"expected a string, got {_describe(item)} {item!r}")
        return list(value)

    def str_map(self, key: builtins.str,
                default: Any = _MISSING) -> dict[builtins.str, builtins.str]:
        value = self.get(key, dict, default)
        if key not in self.data:
            return cast(dict[builtins.str, builtins.str], value)
        for k, v in value.items():
            if not isinstance(v, str):
                raise self.error(f"{key} -> {k}", f"expected a string, got {_describe(v)} {v!r}")
        return dict(value)

    def table(self, key: builtins.str, *, required: builtins.bool = False) -> Table:
        if key not in self.data and not required:
            self._seen.add(key)
            return Table({}, self.source, self.path + (key,))
        value = self.get(key, dict)
        return Table(value, self.source, self.path + (key,))

    def tables(self, key: builtins.str) -> list[Table]:
        """An array of tables (`[[stages]]`), each with an indexed path: `stages[1]`."""
        value = self.get(key, list, [])
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(f"{key}[{i}]", f"expected a table, got {_describe(item)}")
            out.append(Table(item, self.source, self.path + (f"{key}[{i}]",)))
        return out

    def parse(self, key: builtins.str, parser: Callable[[Any], T], default: Any = _MISSING,
              expected: builtins.str = "a valid value") -> T:
        """Read a raw value and convert it; a ValueError from `parser` names this key."""
        self._seen.add(key)
        if key not in self.data:
            if default is _MISSING:
                raise self.error(key, f"missing required key (expected {expected})")
            return default  # type: ignore[no-any-return]
        try:
            return parser(self.data[key])
        except (ValueError, TypeError, HotreleaseError) as exc:
            raise self.error(key, f"expected {expected}: {exc}") from None

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self._seen)
        if unknown:
            raise self.error(unknown[0], "unknown key" + (
                f" (also unknown: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""))
