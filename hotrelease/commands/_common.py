"""Helpers shared by command modules: options, clock, output."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from hotrelease.errors import UsageError
from hotrelease.trust.times import parse_iso

JSON_OPTION = typer.Option(False, "--json", help="Print one JSON document on stdout.")
NOW_OPTION = typer.Option(None, "--now", metavar="ISO8601",
                          help="Pretend the current time is this (dry runs, tests).")
CONFIG_OPTION = typer.Option(None, "--config", "-c", metavar="FILE", dir_okay=False,
                             help="Project config (default: hotrelease.toml here or above).")


def parse_now(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        return parse_iso(text)
    except ValueError as exc:
        raise UsageError(f"--now {exc} (e.g. 2026-05-01T10:00:00Z)") from None


def emit_json(data: Any) -> None:
    print(json.dumps({"ok": True, **data}, indent=2, sort_keys=True, default=str))


def info(message: str) -> None:
    """Progress and human notes go to stderr so stdout stays machine-readable."""
    print(message, file=sys.stderr)


def is_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1") or not sys.stderr.isatty()


def read_passphrase(env_name: str | None) -> bytes | None:
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if value is None:
        raise UsageError(f"passphrase variable {env_name} is not set")
    return value.encode()


def existing_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise UsageError(f"{path}: {what} not found")
    return path
