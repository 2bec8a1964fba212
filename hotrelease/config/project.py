"""`hotrelease.toml` -> typed config. Errors name the file, the key path and what was expected.

Builds the gate's `Policy` and `Schedule`, the build's `PluginConfig` and `BuildConfig`
(declared in `build.settings`, re-exported here) and the fleet (`config.inventory`). Imports
`config`, `gate`, `build.settings` and `trust` only; the rollout, CI glue and commands
import it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hotrelease.build.settings import BuildConfig, PluginConfig
from hotrelease.config.inventory import Inventory, parse_inventory
from hotrelease.config.reader import Table, load_toml
from hotrelease.errors import ConfigError
from hotrelease.gate.policy import (
    BASELINE_SOURCES,
    CLASSES,
    LANES,
    SECURITY_ON_MAJOR,
    SECURITY_SOURCES,
    Policy,
)
from hotrelease.trust.manifest import PLUGIN_KINDS, Dependency, check_name
from hotrelease.trust.times import parse_iso

CONFIG_NAME = "hotrelease.toml"


@dataclass
class TrustConfig:
    release_keys: list[Path] = field(default_factory=list)
    threshold: int = 1
    security_keys: list[Path] = field(default_factory=list)
    security_threshold: int = 1


@dataclass
class NotifyConfig:
    """Who to tell when an update takes the urgent lane: a command and/or a webhook URL."""

    command: list[str] = field(default_factory=list)
    webhook: str | None = None
    timeout: int = 10

    @property
    def targets(self) -> bool:
        return bool(self.command or self.webhook)


@dataclass
class ProjectConfig:
    path: Path
    plugin: PluginConfig
    build: BuildConfig
    trust: TrustConfig
    policy: Policy = field(default_factory=Policy)
    schedule: Any = None  # a gate.schedule.Schedule (imported lazily: a light module)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    inventory: Inventory = field(default_factory=Inventory)

    @property
    def root(self) -> Path:
        return self.path.parent


def _plugin(t: Table) -> PluginConfig:
    name = t.parse("name", check_name, expected="a plugin name (lowercase letters, digits, - _)")
    kind = t.str("kind", "generic", choices=PLUGIN_KINDS)
    deps = []
    for d in t.tables("dependencies"):
        dep_name = d.parse("name", check_name, expected="a plugin name")
        deps.append(Dependency(dep_name, d.str("range")))
        d.finish()
    cfg = PluginConfig(name, kind, t.str_list("entry_symbols", []), deps, t.str_map("labels", {}))
    t.finish()
    return cfg


def _paths(t: Table, key: str, base: Path) -> list[Path]:
    return [(base / p) for p in t.str_list(key, [])]


def _build(t: Table, base: Path) -> BuildConfig:
    cfg = BuildConfig(
        commands=t.str_list("commands"),
        output_dir=base / t.str("output_dir", "dist"),
        workdir=base / t.str("workdir", "."),
        expires_days=t.int("expires_days", 90, min=1, max=3650),
        timeout=t.int("timeout", 1800, min=1),
        env=t.str_map("env", {}),
    )
    if not cfg.commands:
        raise t.error("commands", "expected at least one build command")
    t.finish()
    return cfg


def _trust(t: Table, base: Path) -> TrustConfig:
    cfg = TrustConfig(
        release_keys=_paths(t, "release_keys", base),
        threshold=t.int("threshold", 1, min=1),
        security_keys=_paths(t, "security_keys", base),
        security_threshold=t.int("security_threshold", 1, min=1),
    )
    if cfg.release_keys and cfg.threshold > len(cfg.release_keys):
        raise t.error("threshold", f"is {cfg.threshold} but only {len(cfg.release_keys)} "
                      "release key(s) are listed")
    t.finish()
    return cfg


def _choices(t: Table, key: str, allowed: tuple[str, ...], default: tuple[str, ...]
             ) -> tuple[str, ...]:
    values = t.str_list(key, list(default))
    for i, value in enumerate(values):
        if value not in allowed:
            raise t.error(f"{key}[{i}]", f"expected one of {', '.join(allowed)}, got {value!r}")
    return tuple(values)


def _policy(t: Table) -> Policy:
    d = Policy()
    cfg = Policy(
        security_sources=_choices(t, "security_sources", SECURITY_SOURCES, d.security_sources),
        mr_security_labels=tuple(t.str_list("mr_security_labels", list(d.mr_security_labels))),
        zero_minor_is_major=t.bool("zero_minor_is_major", d.zero_minor_is_major),
        allow_prerelease=t.bool("allow_prerelease", d.allow_prerelease),
        security_on_major=t.str("security_on_major", d.security_on_major,
                                choices=SECURITY_ON_MAJOR),
        break_glass=t.bool("break_glass", d.break_glass),
        approval_classes=_choices(t, "approval_classes", CLASSES, d.approval_classes),
        rollback_lane=t.str("rollback_lane", d.rollback_lane, choices=LANES),
        baseline=t.str("baseline", d.baseline, choices=BASELINE_SOURCES),
    )
    t.finish()
    return cfg


def _recurrence(t: Table, tz: ZoneInfo):  # -> gate.schedule.Recurrence
    from hotrelease.gate.cron import parse_cron
    from hotrelease.gate.schedule import Recurrence, parse_clock, parse_days, parse_duration

    duration = t.parse("duration", parse_duration, expected="a duration like 2h, 90m, 1h30m")
    if t.has("cron"):
        for key in ("days", "start"):
            if t.has(key):
                raise t.error(key, "give either cron or days + start, not both")
        return Recurrence(tz, duration, cron=t.parse("cron", parse_cron,
                                                     expected="a 5-field cron expression"))
    days = t.parse("days", parse_days, expected="week days like [\"tue\", \"thu\"] "
                                                "(or give cron = \"...\")")
    start = t.parse("start", parse_clock, expected="a wall-clock time like \"03:00\"")
    return Recurrence(tz, duration, days=days, start=start)


def _zone(t: Table) -> ZoneInfo:
    from hotrelease.gate.schedule import parse_zone

    return t.parse("timezone", parse_zone, expected="an IANA time zone like Europe/Berlin")


def _windows(tables: list[Table]) -> list[Any]:
    from hotrelease.gate.schedule import Window

    out, names = [], set()
    for i, t in enumerate(tables):
        name = t.str("name", f"window-{i + 1}")
        if name in names:
            raise t.error("name", f"duplicate window name {name!r}")
        names.add(name)
        out.append(Window(name, _recurrence(t, _zone(t))))
        t.finish()
    return out


def _freeze_moment(value: Any, tz: ZoneInfo, *, end: bool) -> datetime:
    """A date (whole day, `end` inclusive), a local datetime (in tz) or one with an offset."""
    if isinstance(value, str):
        try:
            if len(value) != 10:
                return parse_iso(value, default_tz=tz)
            value = date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a date (2026-12-20) or date-time") from None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=tz)).astimezone(ZoneInfo("UTC"))
    if isinstance(value, date):
        day = value + timedelta(days=1) if end else value
        return datetime.combine(day, time(0), tzinfo=tz).astimezone(ZoneInfo("UTC"))
    raise ValueError(f"{value!r} is not a date or date-time")


def _freezes(tables: list[Table]) -> list[Any]:
    from datetime import UTC

    from hotrelease.gate.schedule import Freeze, Interval

    out = []
    for i, t in enumerate(tables):
        name = t.str("name", f"freeze-{i + 1}")
        reason = t.str("reason", "", nonempty=False)
        break_glass = t.bool("break_glass", True)
        tz = _zone(t)
        if t.has("end"):
            start = t.parse("start", partial(_freeze_moment, tz=tz, end=False),
                            expected="a date or date-time")
            stop = t.parse("end", partial(_freeze_moment, tz=tz, end=True),
                           expected="a date (inclusive) or date-time")
            if stop <= start:
                raise t.error("end", "must be after start")
            freeze = Freeze(name, reason, fixed=Interval(start.astimezone(UTC),
                                                         stop.astimezone(UTC)),
                            break_glass=break_glass)
        else:
            freeze = Freeze(name, reason, recurrence=_recurrence(t, tz),
                            break_glass=break_glass)
        out.append(freeze)
        t.finish()
    return out


def _split_command(value: Any) -> list[str]:
    if not isinstance(value, str):
        raise TypeError(f"got {type(value).__name__}")
    return shlex.split(value)


def _notify(t: Table) -> NotifyConfig:
    command: list[str] = []
    if t.has("command"):
        raw = t.data["command"]
        command = (t.str_list("command") if isinstance(raw, list)
                   else t.parse("command", _split_command,
                                expected="a command string or array"))
        if not command:
            raise t.error("command", "must not be empty")
    webhook = t.str("webhook", None)
    if webhook is not None and not webhook.startswith(("http://", "https://")):
        raise t.error("webhook", f"expected an http(s) URL, got {webhook!r}")
    cfg = NotifyConfig(command, webhook, t.int("timeout", 10, min=1, max=300))
    t.finish()
    return cfg


def parse_config(data: dict, path: Path) -> ProjectConfig:
    from hotrelease.gate.schedule import Schedule

    top = Table(data, path)
    base = path.parent
    cfg = ProjectConfig(
        path=path,
        plugin=_plugin(top.table("plugin", required=True)),
        build=_build(top.table("build", required=True), base),
        trust=_trust(top.table("trust"), base),
        policy=_policy(top.table("policy")),
        schedule=Schedule(tuple(_windows(top.tables("windows"))),
                          tuple(_freezes(top.tables("freezes")))),
        notify=_notify(top.table("notify")),
        inventory=parse_inventory(top, base),
    )
    top.finish()
    return cfg


def find_config(explicit: Path | None, start: Path | None = None) -> Path:
    if explicit is not None:
        return explicit
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / CONFIG_NAME
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no {CONFIG_NAME} in {here} or its parents (use --config FILE)")


def load_config(explicit: Path | None = None, start: Path | None = None) -> ProjectConfig:
    path = find_config(explicit, start)
    return parse_config(load_toml(path), path)


def config_warnings(cfg: ProjectConfig) -> list[str]:
    """Valid settings that probably are not meant; `config check` prints them."""
    warnings = []
    if not cfg.notify.targets:
        # Any signed security patch takes the urgent lane: someone has to hear about it.
        warnings.append(f"{cfg.path}: notify: the urgent lane has no notify target (no "
                        "[notify] webhook or command): when a security patch ships, nobody "
                        "is told")
    if not cfg.trust.security_keys:
        warnings.append(f"{cfg.path}: trust -> security_keys: empty: no security label can "
                        "be verified, so no update takes the urgent lane")
    return warnings
