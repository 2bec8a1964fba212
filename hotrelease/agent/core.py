"""What every job of the agent shares: its config, store and clock, which plugin slot a
request names, the version a request names, refusing (recorded in history before it is
raised), and what is stored.

The jobs (`ingest`, `activation`, `floor`, `approvals`, `recovery`) each take an
`AgentCore`; `service.Agent` is the core with its jobs attached. Imports only the agent's
own config and store, the trust core and `hotrelease.errors`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from hotrelease.agent.config import AgentConfig, PluginConfig
from hotrelease.agent.store import Store
from hotrelease.agent.wire import StoredRelease
from hotrelease.errors import BadRequest, HotreleaseError, ManifestFormatError, NotFound
from hotrelease.trust.canonical import clip
from hotrelease.trust.manifest import (
    MAX_NAME_LENGTH,
    ReleaseManifest,
    check_name,
    check_version,
    parse_manifest_bytes,
)
from hotrelease.trust.versions import MAX_VERSION_LENGTH, parse_version


class AgentCore:
    def __init__(self, config: AgentConfig, *,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.store = Store(config.data_dir)
        self.clock = clock or (lambda: datetime.now(UTC))

    def plugin(self, name: str, *, who: str | None = None, action: str = "request") -> \
            PluginConfig:
        """The slot `name` names; a bad or unknown name is refused (and recorded in the
        agent's own history: there is no plugin history to put it in)."""
        try:
            check_name(name)
        except ManifestFormatError as exc:
            self.store.append_history(None, {"action": action, "who": who,
                                             "plugin": clip(name, MAX_NAME_LENGTH),
                                             "result": "refused", "code": "bad_name",
                                             "reason": str(exc)})
            raise BadRequest(str(exc), code="bad_name") from None
        pcfg = self.config.plugins.get(name)
        if pcfg is None:
            self.store.append_history(None, {"action": action, "who": who, "plugin": name,
                                             "result": "refused", "code": "unknown_plugin",
                                             "reason": "no such plugin slot on this node"})
            raise NotFound(f"plugin {name!r} is not configured on this agent",
                           code="unknown_plugin")
        return pcfg

    def refuse(self, name: str, record: dict[str, Any], exc: HotreleaseError) -> \
            HotreleaseError:
        """Record the refusal in the plugin's history; the caller raises what it returns."""
        self.store.append_history(name, {**record, "result": "refused", "code": exc.code,
                                         "reason": str(exc)})
        return exc

    def check_version_param(self, name: str, version: str, record: dict[str, Any]) -> str:
        try:
            return check_version(version)
        except ManifestFormatError as exc:
            record["version"] = clip(version, MAX_VERSION_LENGTH)  # not a megabyte of it
            raise self.refuse(name, record, BadRequest(str(exc), code="bad_version")) from None

    def release_info(self, name: str, version: str) -> StoredRelease | None:
        """The stored release `name@version`, None when it is not stored."""
        rdir = self.store.release_dir(name, version)
        try:
            data = (rdir / "manifest.json").read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        raw, _ = parse_manifest_bytes(data)
        manifest = ReleaseManifest.from_dict(raw)
        return StoredRelease(name=name, version=version, release_id=manifest.release_id,
                             bundle_sha256=manifest.bundle.sha256,
                             bundle_size=manifest.bundle.size, kind=manifest.kind,
                             expires=raw.get("expires"), path=str(rdir))


def below(a: str, b: str) -> bool:
    """Whether version `a` is lower than version `b` (SemVer precedence)."""
    return bool(parse_version(a) < parse_version(b))


def now() -> float:
    return time.perf_counter()


def ms_since(start: float) -> float:
    return round((now() - start) * 1000, 3)
