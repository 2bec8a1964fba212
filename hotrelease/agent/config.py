"""`agent.toml` -> typed agent configuration (strict: unknown keys are errors).

Relative paths are resolved against the directory of the config file. See docs/agent.md for
a commented example.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path

from hotrelease.agent.auth import MIN_TOKEN_LENGTH, TokenEntry, is_token_hash
from hotrelease.config.reader import Table, load_toml
from hotrelease.errors import ConfigError
from hotrelease.trust.archive import DEFAULT_LIMITS, PATH_HEADROOM, PATH_MAX, ExtractLimits
from hotrelease.trust.keys import PublicKey, load_trusted
from hotrelease.trust.manifest import check_name

DEFAULT_PORT = 7701
DEFAULT_MAX_UPLOAD = 512 * 1024 * 1024


@dataclass(frozen=True)
class ReloadHook:
    kind: str  # "none" | "command" | "signal" | "url"
    command: list[str] = field(default_factory=list)
    pid_file: Path | None = None
    signal: int = int(signal.SIGHUP)
    url: str = ""
    timeout: float = 10.0


@dataclass(frozen=True)
class HealthCheck:
    kind: str  # "none" | "command" | "url"
    command: list[str] = field(default_factory=list)
    url: str = ""
    timeout: float = 2.0  # per probe; a probe that takes longer is a failure
    interval: float = 0.2  # between probes
    retries: int = 5  # failed probes tolerated before the first success (host warming up)
    max_consecutive_errors: int = 2  # failures in a row after the first success that fail it
    min_healthy_seconds: float = 1.0  # must stay healthy this long after the first success
    require_version: bool = True  # URL check: JSON body must report the activated version


@dataclass(frozen=True)
class PrecheckHook:
    """A command run before the switch; non-zero refuses the activation with nothing
    changed. `{release_dir}` in an argument is the stored release being activated (e.g. a
    Go host's `-check-abi {release_dir}`)."""

    command: tuple[str, ...] = ()
    timeout: float = 30.0


@dataclass(frozen=True)
class PluginConfig:
    name: str
    reload: ReloadHook
    health: HealthCheck
    precheck: PrecheckHook = PrecheckHook()


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path
    client_ca: Path | None  # set -> client certificates required (mTLS, CERT_REQUIRED)


@dataclass(frozen=True)
class HttpLimits:
    """[agent] bounds on the HTTP layer, enforced by `agent/server.py` (docs/agent.md)."""

    max_header_bytes: int = 512 * 1024  # request line + headers; a 256 KiB manifest fits
    header_timeout: float = 30.0  # first byte of a request to the end of its headers
    body_timeout: float = 30.0  # window: each one must bring body_min_rate x window bytes
    body_min_rate: int = 1024  # bytes per second, averaged over each body_timeout window
    keep_alive_timeout: float = 5.0  # idle connection (before a request or between two)
    max_connections: int = 2048  # more are answered 503 at once (lowered to fit the fd limit)
    shutdown_timeout: float = 30.0  # graceful stop: requests under way get this long


DEFAULT_HTTP_LIMITS = HttpLimits()


@dataclass
class AgentConfig:
    source: Path
    data_dir: Path
    listen: str
    port: int
    max_upload_bytes: int
    trusted: dict[str, PublicKey]
    threshold: int
    security_keys: dict[str, PublicKey]
    security_threshold: int
    tokens: list[TokenEntry]
    plugins: dict[str, PluginConfig]
    tls: TlsConfig | None = None
    approval_keys: dict[str, PublicKey] = field(default_factory=dict)
    approval_threshold: int = 1
    node_name: str | None = None  # matched against the node list of a stage approval
    extract_limits: ExtractLimits = DEFAULT_LIMITS  # [agent] max_extracted_bytes, ...
    http_limits: HttpLimits = DEFAULT_HTTP_LIMITS  # [agent] max_header_bytes, ...


def _extract_limits(t: Table) -> ExtractLimits:
    """The agent-side bounds on what a (validly signed) bundle may expand to."""
    d = DEFAULT_LIMITS
    return ExtractLimits(
        max_extracted_bytes=t.int("max_extracted_bytes", d.max_extracted_bytes, min=1),
        max_members=t.int("max_members", d.max_members, min=1, max=10_000_000),
        max_path_depth=t.int("max_path_depth", d.max_path_depth, min=1, max=PATH_MAX // 2),
        max_path_length=t.int("max_path_length", d.max_path_length, min=1,
                              max=PATH_MAX - 1 - PATH_HEADROOM),
        max_pax_header_bytes=t.int("max_pax_header_bytes", d.max_pax_header_bytes, min=512,
                                   max=16 * 1024 * 1024))


def _http_limits(t: Table) -> HttpLimits:
    """The agent's bounds on connections, request heads and request bodies."""
    d = DEFAULT_HTTP_LIMITS

    def seconds(key: str, default: float, low: float) -> float:
        value = t.float(key, default, min=low)
        if not value <= 3600:  # also refuses nan and inf
            raise t.error(key, f"expected a number of seconds <= 3600, got {value}")
        return value

    return HttpLimits(
        max_header_bytes=t.int("max_header_bytes", d.max_header_bytes, min=4096,
                               max=64 * 1024 * 1024),
        header_timeout=seconds("header_timeout", d.header_timeout, 0.1),
        body_timeout=seconds("body_timeout", d.body_timeout, 0.1),
        body_min_rate=t.int("body_min_rate", d.body_min_rate, min=0, max=1024 * 1024 * 1024),
        keep_alive_timeout=seconds("keep_alive_timeout", d.keep_alive_timeout, 0.1),
        max_connections=t.int("max_connections", d.max_connections, min=1, max=1_000_000),
        shutdown_timeout=seconds("shutdown_timeout", d.shutdown_timeout, 0.0))


def _path(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def _keys(table: Table, key: str, base: Path) -> dict[str, PublicKey]:
    paths = table.str_list(key, [])
    try:
        return load_trusted([_path(base, p) for p in paths])
    except Exception as exc:  # KeyFileError
        raise table.error(key, str(exc)) from None


def _signal(value: object) -> int:
    if not isinstance(value, str):
        raise ValueError("expected a signal name like HUP or USR1")
    name = value.upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    sig = getattr(signal, name, None)
    if not isinstance(sig, signal.Signals):
        raise ValueError(f"unknown signal {value!r}")
    return int(sig)


def _reload(t: Table, base: Path) -> ReloadHook:
    kinds = [k for k in ("command", "pid_file", "url") if t.has(k)]
    if len(kinds) > 1:
        raise t.error(kinds[1], f"give only one of command, pid_file, url (also {kinds[0]})")
    timeout = t.float("timeout", 10.0, min=0.1)
    if t.has("command"):
        cmd = t.str_list("command")
        if not cmd:
            raise t.error("command", "must not be empty")
        t.finish()
        return ReloadHook("command", command=cmd, timeout=timeout)
    if t.has("pid_file"):
        pid_file = _path(base, t.str("pid_file"))
        sig = t.parse("signal", _signal, int(signal.SIGHUP), "a signal name")
        t.finish()
        return ReloadHook("signal", pid_file=pid_file, signal=sig, timeout=timeout)
    if t.has("url"):
        url = t.str("url")
        if not url.startswith(("http://", "https://")):
            raise t.error("url", "expected an http:// or https:// URL")
        t.finish()
        return ReloadHook("url", url=url, timeout=timeout)
    t.finish()
    return ReloadHook("none", timeout=timeout)


def _precheck(t: Table) -> PrecheckHook:
    if not t.data:
        return PrecheckHook()
    command = t.str_list("command")
    if not command:
        raise t.error("command", "must not be empty")
    hook = PrecheckHook(tuple(command), t.float("timeout", 30.0, min=0.1))
    t.finish()
    return hook


def _health(t: Table) -> HealthCheck:
    if t.has("command") and t.has("url"):
        raise t.error("url", "give only one of command, url")
    common = dict(
        timeout=t.float("timeout", 2.0, min=0.05),
        interval=t.float("interval", 0.2, min=0.0),
        retries=t.int("retries", 5, min=0, max=1000),
        max_consecutive_errors=t.int("max_consecutive_errors", 2, min=1, max=1000),
        min_healthy_seconds=t.float("min_healthy_seconds", 1.0, min=0.0),
        require_version=t.bool("require_version", True),
    )
    if t.has("command"):
        cmd = t.str_list("command")
        if not cmd:
            raise t.error("command", "must not be empty")
        t.finish()
        return HealthCheck("command", command=cmd, **common)  # type: ignore[arg-type]
    if t.has("url"):
        url = t.str("url")
        if not url.startswith(("http://", "https://")):
            raise t.error("url", "expected an http:// or https:// URL")
        t.finish()
        return HealthCheck("url", url=url, **common)  # type: ignore[arg-type]
    t.finish()
    return HealthCheck("none", **common)  # type: ignore[arg-type]


def load_agent_config(path: Path) -> AgentConfig:
    path = Path(path)
    base = path.resolve().parent
    root = Table(load_toml(path), path)

    agent = root.table("agent", required=True)
    data_dir = _path(base, agent.str("data_dir"))
    listen = agent.str("listen", "127.0.0.1")
    port = agent.int("port", DEFAULT_PORT, min=0, max=65535)
    max_upload = agent.int("max_upload_bytes", DEFAULT_MAX_UPLOAD, min=1)
    node_name = agent.str("node_name", None)
    extract_limits = _extract_limits(agent)
    http_limits = _http_limits(agent)
    agent.finish()

    trust = root.table("trust", required=True)
    trusted = _keys(trust, "release_keys", base)
    if not trusted:
        raise trust.error("release_keys", "at least one trusted release key is required")
    threshold = trust.int("threshold", 1, min=1)
    if threshold > len(trusted):
        raise trust.error("threshold", f"{threshold} is more than the {len(trusted)} "
                                       "trusted key(s)")
    security_keys = _keys(trust, "security_keys", base)
    security_threshold = trust.int("security_threshold", 1, min=1)
    approval_keys = _keys(trust, "approval_keys", base)
    approval_threshold = trust.int("approval_threshold", 1, min=1)
    trust.finish()

    tokens: list[TokenEntry] = []
    for tt in root.tables("tokens"):
        name = tt.str("name")
        digest = tt.str("sha256")
        if not is_token_hash(digest):
            raise tt.error("sha256", "expected the 64 lowercase hex digits printed by "
                                     "`hotrelease agent hash-token`")
        tt.finish()
        if any(t.name == name for t in tokens):
            raise tt.error("name", f"token name {name!r} is used twice")
        tokens.append(TokenEntry(name, digest))
    if not tokens:
        raise root.error("tokens", f"at least one [[tokens]] entry is required (tokens of at "
                                   f"least {MIN_TOKEN_LENGTH} characters, stored hashed)")

    plugins: dict[str, PluginConfig] = {}
    ptable = root.table("plugins")
    for name in list(ptable.data):
        pt = ptable.table(name, required=True)
        try:
            check_name(name)
        except Exception as exc:
            raise ptable.error(name, str(exc)) from None
        reload_hook = _reload(pt.table("reload"), base)
        health = _health(pt.table("health"))
        precheck = _precheck(pt.table("precheck"))
        pt.finish()
        plugins[name] = PluginConfig(name, reload_hook, health, precheck)
    ptable.finish()

    tls = None
    tt = root.table("tls")
    if tt.data:
        cert = _path(base, tt.str("cert"))
        key = _path(base, tt.str("key"))
        ca = tt.str("client_ca", None)
        tt.finish()
        for k, p in (("cert", cert), ("key", key)):
            if not p.is_file():
                raise tt.error(k, f"{p}: file not found")
        tls = TlsConfig(cert, key, _path(base, ca) if ca else None)
        if tls.client_ca is not None and not tls.client_ca.is_file():
            raise tt.error("client_ca", f"{tls.client_ca}: file not found")
    root.finish()
    if not plugins:
        raise ConfigError(f"{path}: plugins: configure at least one [plugins.<name>] slot")
    return AgentConfig(path, data_dir, listen, port, max_upload, trusted, threshold,
                       security_keys, security_threshold, tokens, plugins, tls,
                       approval_keys, approval_threshold, node_name, extract_limits,
                       http_limits)
