"""What a build needs to know about the plugin and its build commands, as plain data.

`config.project` reads these from `[plugin]` and `[build]` of `hotrelease.toml` (and
re-exports them); `build.artifact` takes them through its `BuildProject` protocol, so the
build never imports the config. Imports `trust.manifest` only (for `Dependency`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hotrelease.trust.manifest import Dependency


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
