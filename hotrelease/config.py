"""`hotrelease.toml` -> typed config. Errors name the file, the key path and what was expected."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hotrelease.configreader import Table, load_toml
from hotrelease.errors import ConfigError
from hotrelease.manifest import PLUGIN_KINDS, Dependency, check_name

CONFIG_NAME = "hotrelease.toml"


@dataclass
class PluginConfig:
    name: str
    kind: str
    entry_symbols: list[str] = field(default_factory=list)
    dependencies: list[Dependency] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class BuildConfig:
    # Each command is split like a shell would (shlex) but run without a shell; placeholders
    # {name} {version} {out} {plugin_path} are substituted per argument, so a version string
    # can never inject shell syntax.
    commands: list[str]
    output_dir: Path
    workdir: Path
    expires_days: int = 90
    timeout: int = 1800
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class TrustConfig:
    release_keys: list[Path] = field(default_factory=list)
    threshold: int = 1
    security_keys: list[Path] = field(default_factory=list)
    security_threshold: int = 1


@dataclass
class ProjectConfig:
    path: Path
    plugin: PluginConfig
    build: BuildConfig
    trust: TrustConfig

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


def parse_config(data: dict, path: Path) -> ProjectConfig:
    top = Table(data, path)
    base = path.parent
    cfg = ProjectConfig(
        path=path,
        plugin=_plugin(top.table("plugin", required=True)),
        build=_build(top.table("build", required=True), base),
        trust=_trust(top.table("trust"), base),
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
