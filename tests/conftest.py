"""Shared fixtures: real git repositories in temp dirs, real Ed25519 keys, real builds of
the example plugin, and the CLI run as a real subprocess (exit codes, stdout, stderr)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples"
PYTHON_PLUGIN = EXAMPLES / "python-plugin"


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# The one clock of the test run, read from the real one: agents check expiry against the real
# clock, so a test time pinned to a calendar date would expire with it. Tests that need a time
# of day or a weekday derive it from here (e.g. a window opening 10 hours from now).
TEST_NOW = datetime.now(UTC).replace(microsecond=0)
NOW = iso(TEST_NOW)


# --- the CLI as a user runs it ---------------------------------------------------------------


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def _last(self, prefix: str) -> str:
        lines = [ln for ln in self.stderr.splitlines() if ln.startswith(prefix)]
        return lines[-1] if lines else ""

    @property
    def error_line(self) -> str:
        return self._last("hotrelease: error:")

    @property
    def not_now_line(self) -> str:
        """Exit 3 is reported as `hotrelease: not now: …`, never as an error."""
        return self._last("hotrelease: not now:")


def run_cli(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> CliResult:
    full_env = {**os.environ, "HOTRELEASE_DEBUG": "", **(env or {})}
    full_env.pop("HOTRELEASE_DEBUG")
    proc = subprocess.run([sys.executable, "-m", "hotrelease", *map(str, args)], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    return run_cli


# --- keys ---------------------------------------------------------------------------------


@dataclass
class KeyPair:
    private: Path
    public: Path
    keyid: str


@pytest.fixture
def make_key(tmp_path: Path) -> Callable[[str], KeyPair]:
    from hotrelease.trust.keys import generate_keypair

    keydir = tmp_path / "keys"
    keydir.mkdir(exist_ok=True)

    def make(name: str = "release", passphrase: bytes | None = None) -> KeyPair:
        public = generate_keypair(keydir / name, passphrase)
        return KeyPair(keydir / f"{name}.key", keydir / f"{name}.pub", public.keyid)

    return make


# --- git ----------------------------------------------------------------------------------


class GitRepo:
    """A real git repository in a temp dir, driven through the git CLI."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def git(self, *args: str) -> str:
        env = {**os.environ, "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "t@example.com",
               "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "t@example.com",
               "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
               "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}
        return subprocess.run(["git", *args], cwd=self.path, env=env, check=True,
                              capture_output=True, text=True).stdout.strip()

    def commit(self, message: str = "change", files: dict[str, str] | None = None) -> str:
        for name, content in (files or {}).items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")

    def tag(self, name: str, message: str | None = None) -> None:
        if message is None:
            self.git("tag", name)
        else:
            self.git("tag", "-a", name, "-m", message)


@pytest.fixture
def make_git_repo(tmp_path: Path) -> Callable[[str], GitRepo]:
    def make(name: str = "repo") -> GitRepo:
        path = tmp_path / name
        path.mkdir(parents=True)
        subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
        return GitRepo(path)

    return make


@pytest.fixture
def plugin_repo(make_git_repo: Callable[[str], GitRepo]) -> GitRepo:
    """The example Python plugin, committed in a fresh git repository."""
    repo = make_git_repo("greeter")
    shutil.copytree(PYTHON_PLUGIN, repo.path, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("dist", "__pycache__"))
    (repo.path / ".gitignore").write_text("dist/\n")
    repo.commit("greeter plugin")
    return repo


# --- builds -------------------------------------------------------------------------------


@dataclass
class SignedRelease:
    manifest: Path
    bundle: Path
    signature: Path
    key: KeyPair
    version: str


@pytest.fixture
def build_plugin(plugin_repo: GitRepo, make_key: Callable[..., KeyPair]):
    """Build (in-process) and sign a version of the example plugin; returns SignedRelease."""
    from hotrelease.build.artifact import build_release
    from hotrelease.config.project import load_config
    from hotrelease.trust.keys import load_private_key
    from hotrelease.trust.manifest import sign_manifest, signature_path_for

    default_key = make_key("release")

    def build(version: str = "1.0.0", *, key: KeyPair | None = None, out: Path | None = None,
              env: dict[str, str] | None = None, sign: bool = True) -> SignedRelease:
        key = key or default_key
        cfg = load_config(plugin_repo.path / "hotrelease.toml")
        result = build_release(cfg, version=version, out_dir=out, allow_dirty=False,
                               now=TEST_NOW,
                               env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000",
                                    **(env or {})})
        sig = signature_path_for(result.manifest_path)
        if sign:
            sign_manifest(result.manifest_path, load_private_key(key.private))
        return SignedRelease(result.manifest_path, result.bundle_path, sig, key, version)

    return build


def go_available() -> bool:
    return shutil.which("go") is not None


requires_go = pytest.mark.skipif(not go_available(), reason="Go toolchain not installed")


# --- node agent (issue 4): real agent processes on loopback ---------------------------------

AGENT_TOKEN = "test-token-0123456789abcdef"  # name "ci" in the generated agent.toml
AGENT_TOKEN_2 = "other-token-0123456789abcdef"  # name "ops"
_HISTORY_FILES = {"history.jsonl", "agent-history.jsonl", "agent.lock"}


_PORTS_GIVEN: set[int] = set()
_PORT_RNG = random.Random()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback port for a test server: below the kernel's ephemeral range, so no outgoing
    connection can take it between this check and the server's bind, and never handed out
    twice in one run (two servers started together asked for ports before either bound)."""
    import socket

    low, _ = _ephemeral_range()
    for _ in range(500):
        port = _PORT_RNG.randrange(max(1024, low - 12000), low)
        if port in _PORTS_GIVEN:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS_GIVEN.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


_T = TypeVar("_T")


def wait_until(predicate: Callable[[], _T | None], timeout: float = 20.0,
               what: str = "condition") -> _T:
    """Bounded polling: returns the first truthy value, fails the test at the deadline."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def node_snapshot(data_dir: Path) -> dict[str, object]:
    """Every file's bytes, every symlink's target and every directory under the agent's data
    dir, except the append-only history files (which refusals are expected to grow)."""
    snap: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(data_dir):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(data_dir).as_posix()
            if name in _HISTORY_FILES:
                continue
            if full.is_symlink():
                snap[rel] = ("link", os.readlink(full))
            elif full.is_dir():
                snap[rel] = ("dir",)
            else:
                snap[rel] = full.read_bytes()
    return snap


def read_history(data_dir: Path, name: str = "greeter") -> list[dict]:
    import json

    path = data_dir / "plugins" / name / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class AgentProcess:
    """One `hotrelease agent serve` subprocess and its config/data dir."""

    # Set by the helpers and fixtures that prepare an agent (with_active_release,
    # hosted_agent, per-file fixtures); declared here for mypy only, absent until set.
    base: SignedRelease
    next: SignedRelease
    releases: dict[str, SignedRelease]
    host: PyHost
    security: KeyPair

    def __init__(self, root: Path, config_text: str, port: int, scheme: str = "http",
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        self.config = root / "agent.toml"
        self.config.write_text(config_text)
        self.data_dir = root / "data"
        self.port = port
        self.url = f"{scheme}://127.0.0.1:{port}"
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log = root / "agent.log"
        self.ready_kwargs: dict[str, Any] = {"verify": False}  # e.g. cert= for mTLS

    def start(self, env: dict[str, str] | None = None, wait: bool = True) -> AgentProcess:
        full_env = {k: v for k, v in os.environ.items() if k != "HOTRELEASE_AGENT_CRASH_AT"}
        full_env.update({**self.env, **(env or {})})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hotrelease", "agent", "serve", "--config", str(self.config)],
            env=full_env, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"),  # noqa: SIM115
            start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        import requests

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"agent exited with {self.proc.returncode}: "
                            f"{self.log.read_text()[-2000:]}")
            try:
                return requests.get(f"{self.url}/v1/health", timeout=1,
                                    **self.ready_kwargs).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, timeout, "the agent's /v1/health")

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def client(self, token: str = AGENT_TOKEN, **kwargs: object):
        from hotrelease.agent.client import AgentClient

        return AgentClient(self.url, token, **kwargs)  # type: ignore[arg-type]

    def snapshot(self) -> dict[str, object]:
        return node_snapshot(self.data_dir)

    def history(self, name: str = "greeter") -> list[dict]:
        return read_history(self.data_dir, name)


def agent_toml(data_dir: Path, port: int, release_keys: list[Path], *,
               security_keys: Sequence[Path] = (), approval_keys: Sequence[Path] = (),
               threshold: int = 1,
               max_upload: int = 64 * 1024 * 1024, plugins: str | None = None,
               extra: str = "") -> str:
    from hotrelease.agent.auth import hash_token

    keys = ", ".join(f'"{p}"' for p in release_keys)
    sec = ", ".join(f'"{p}"' for p in security_keys)
    appr = ", ".join(f'"{p}"' for p in approval_keys)
    plugins = plugins if plugins is not None else "[plugins.greeter]\n"
    return (f'[agent]\ndata_dir = "{data_dir}"\nlisten = "127.0.0.1"\nport = {port}\n'
            f"max_upload_bytes = {max_upload}\n\n"
            f"[trust]\nrelease_keys = [{keys}]\nthreshold = {threshold}\n"
            f"security_keys = [{sec}]\napproval_keys = [{appr}]\n\n"
            f'[[tokens]]\nname = "ci"\nsha256 = "{hash_token(AGENT_TOKEN)}"\n\n'
            f'[[tokens]]\nname = "ops"\nsha256 = "{hash_token(AGENT_TOKEN_2)}"\n\n'
            f"{plugins}\n{extra}")


class PyHost:
    """The Python plugin host serving `<data>/plugins/greeter/current`."""

    def __init__(self, root: Path, current: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pid_file = root / "host.pid"
        self.current = current
        self.proc: subprocess.Popen | None = None
        self.root = root

    def start(self) -> PyHost:
        import requests

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hotrelease.agent.pyhost", "--current", str(self.current),
             "--port", str(self.port), "--pid-file", str(self.pid_file)],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "host.log", "ab"),  # noqa: SIM115
            start_new_session=True)

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail("plugin host exited early")
            try:
                requests.get(f"{self.url}/health", timeout=1)
                return self.pid_file.exists()
            except requests.RequestException:
                return False

        wait_until(up, 20, "the plugin host")
        return self

    def health(self) -> dict:
        import requests

        return requests.get(f"{self.url}/health", timeout=5).json()

    def play(self, player: str = "ann") -> dict:
        import requests

        return requests.post(f"{self.url}/play", json={"player": player}, timeout=5).json()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def make_agent(tmp_path: Path, build_plugin):
    """Factory: write agent.toml (trusting build_plugin's release key) and start a real agent
    on a free loopback port. Every process started here is killed at teardown."""
    started: list[AgentProcess | PyHost] = []
    counter = iter(range(1000))

    def make(*, plugins: str | None = None, start: bool = True, extra: str = "",
             release_keys: list[Path] | None = None, security_keys: Sequence[Path] = (),
             approval_keys: Sequence[Path] = (), threshold: int = 1,
             max_upload: int = 64 * 1024 * 1024, scheme: str = "http",
             env: dict[str, str] | None = None, root: Path | None = None) -> AgentProcess:
        root = root or tmp_path / f"agent{next(counter)}"
        root.mkdir(parents=True, exist_ok=True)
        port = free_port()
        keys = release_keys or [tmp_path / "keys" / "release.pub"]
        text = agent_toml(root / "data", port, keys, security_keys=security_keys,
                          approval_keys=approval_keys, threshold=threshold,
                          max_upload=max_upload, plugins=plugins, extra=extra)
        agent = AgentProcess(root, text, port, scheme, env)
        started.append(agent)
        if start:
            agent.start()
        return agent

    def host_for(agent: AgentProcess, name: str = "greeter") -> PyHost:
        host = PyHost(agent.root, agent.data_dir / "plugins" / name / "current")
        started.append(host)
        return host

    make.host_for = host_for  # type: ignore[attr-defined]
    yield make
    for proc in started:
        proc.stop()


@dataclass
class Crafted:
    manifest: Path
    signature: Path
    bundle: Path
    name: str
    version: str


def craft_release(base: SignedRelease, out: Path, *, keys: list[Path] | None = None,
                  mutate: Callable[[dict], None] | None = None,
                  bundle: Path | None = None, files: list[dict] | None = None) -> Crafted:
    """A re-signed variant of a real release: change the manifest (`mutate`), swap in another
    bundle (digest/size/files recomputed), sign with other keys. Keys are private key paths;
    [] leaves the envelope with no signatures."""
    import hashlib
    import json

    from hotrelease.trust.canonical import pretty_bytes
    from hotrelease.trust.keys import MANIFEST_TYPE, Envelope, load_private_key
    from hotrelease.trust.manifest import parse_manifest_bytes

    out.mkdir(parents=True, exist_ok=True)
    doc = json.loads(base.manifest.read_bytes())
    bundle_path = base.bundle
    if bundle is not None:
        data = bundle.read_bytes()
        doc["bundle"] = {"filename": bundle.name, "sha256": hashlib.sha256(data).hexdigest(),
                         "size": len(data)}
        doc["files"] = files if files is not None else []
        bundle_path = bundle
    if mutate is not None:
        mutate(doc)
    manifest = out / "manifest.json"
    manifest.write_bytes(pretty_bytes(doc))
    _, canonical = parse_manifest_bytes(manifest.read_bytes())
    envelope = Envelope(MANIFEST_TYPE)
    for key in (keys if keys is not None else [base.key.private]):
        envelope.add_signature(canonical, load_private_key(key))
    sig = out / "manifest.json.sig"
    envelope.save(sig)
    return Crafted(manifest, sig, bundle_path, doc["name"], doc["version"])


def raw_upload(agent: AgentProcess, name: str, version: str, manifest: Path | bytes | None,
               signature: Path | bytes | None, body: bytes | Path, token: str = AGENT_TOKEN,
               headers: dict[str, str] | None = None):
    """A PUT built by hand (requests), for refusals the client library would not produce."""
    import base64

    import requests

    def enc(value: Path | bytes) -> str:
        data = value.read_bytes() if isinstance(value, Path) else value
        return base64.b64encode(data).decode()

    h = {"Authorization": f"Bearer {token}", **(headers or {})}
    if manifest is not None:
        h["X-Hotrelease-Manifest"] = enc(manifest)
    if signature is not None:
        h["X-Hotrelease-Signature"] = enc(signature)
    data = body.read_bytes() if isinstance(body, Path) else body
    return requests.put(f"{agent.url}/v1/plugins/{name}/releases/{version}", data=data,
                        headers=h, timeout=30)


def with_active_release(agent: AgentProcess, build_plugin) -> AgentProcess:
    """greeter 1.0.0 stored and active on `agent`; `agent.base` is it, `agent.next` a signed
    1.1.0 ready to upload."""
    base = build_plugin("1.0.0")
    client = agent.client()
    assert client.upload(base.manifest)["status"] == "stored"
    assert client.activate("greeter", "1.0.0")["result"] == "activated"
    agent.base = base
    agent.next = build_plugin("1.1.0")
    return agent


def hosted_agent(make_agent, *, health: str | None = None, reload: str = "url",
                 security_keys=(), min_healthy: float = 0.2):
    """An agent whose greeter slot reloads the pyhost and checks its /health URL (healthy
    for `min_healthy` seconds before an activation counts)."""
    agent = make_agent(start=False, security_keys=list(security_keys))
    host = make_agent.host_for(agent)
    reload_line = (f'reload = {{ url = "{host.url}/admin/reload", timeout = 5 }}'
                   if reload == "url" else f'reload = {{ pid_file = "{host.pid_file}" }}')
    health_line = health or (f'health = {{ url = "{host.url}/health", interval = 0.05, '
                             f"min_healthy_seconds = {min_healthy}, retries = 40, "
                             "timeout = 2 }")
    text = agent.config.read_text().replace("[plugins.greeter]\n",
                                            f"[plugins.greeter]\n{reload_line}\n{health_line}\n")
    agent.config.write_text(text)
    agent.start()
    host.start()
    agent.host = host
    return agent
