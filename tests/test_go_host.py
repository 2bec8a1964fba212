"""The example Go game-server host: hot swap under load over persistent connections, session
state kept across versions, unhealthy broken releases, rollback to an already loaded version,
and the ABI check that refuses a mismatched plugin before plugin.Open."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from gohelpers import (
    API,
    HostProcess,
    activate,
    build_host,
    call,
    copy_sources,
    go_marks,
    hotrelease_build,
    install_release,
    start_host,
)

pytestmark = go_marks()



@dataclass
class Built:
    host: Path
    releases: Path
    dirs: dict[str, Path]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("go")
    host = build_host(root / "bin" / "gamehost")
    src = copy_sources(root / "src")
    releases = root / "releases"
    variants = {
        "1.0.0": {},
        "1.1.0": {},
        "1.2.0": {"GOFLAGS": "-tags=arena_broken"},             # fails its health check
        "1.3.0": {"GOFLAGS": "-modfile=testdata/abi-mismatch.mod"},  # other gameapi version
    }
    dirs = {}
    for version, env in variants.items():
        result = hotrelease_build(src, version, root / "dist", env=env)
        dirs[version] = install_release(result, releases)
    return Built(host, releases, dirs)


@pytest.fixture
def hosts() -> Iterator[list[HostProcess]]:
    started: list[HostProcess] = []
    yield started
    for h in started:
        h.stop()


@pytest.fixture
def run_host(built: Built, hosts: list[HostProcess], tmp_path: Path):
    """Start a host whose `current` link (in this test's own dir) points at a version."""
    def start(version: str, *extra: str) -> tuple[HostProcess, Path]:
        slot = tmp_path / "releases"
        current = activate(slot, built.dirs[version])
        h = start_host(built.host, current, tmp_path / f"host{len(hosts)}", *extra)
        hosts.append(h)
        return h, slot
    return start


def check_abi(built: Built, release: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(built.host), "-check-abi", str(release)], capture_output=True,
                          text=True, timeout=60)


# --- hot swap under load ----------------------------------------------------------------------


@dataclass
class Player:
    """One client on one persistent connection, playing until told to stop."""
    host: HostProcess
    session: str
    max_requests: int = 20000
    responses: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sockets: list[object] = field(default_factory=list)
    amounts: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        conn = self.host.connection()
        try:
            for i in range(self.max_requests):
                if self.stop.is_set():
                    break
                amount = i % 7 + 1
                try:
                    status, body = call(conn, "POST", "/play",
                                        {"session": self.session, "action": "hit",
                                         "amount": amount})
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    self.errors.append(f"request {i}: {exc!r}")
                    break
                sock = conn.sock
                if sock is not None and (not self.sockets or self.sockets[-1] is not sock):
                    self.sockets.append(sock)
                if status != 200:
                    self.errors.append(f"request {i}: HTTP {status} {body}")
                    continue
                self.amounts += amount
                self.responses.append(body)
        finally:
            conn.close()

    def start(self) -> None:
        self.thread.start()

    def versions(self) -> list[str]:
        return [r["version"] for r in self.responses]

    def wait_for(self, predicate, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate():
            if self.errors or not self.thread.is_alive():
                break
            time.sleep(0.01)
        assert predicate(), f"{self.session}: never {what}; errors {self.errors[:3]}"


def test_hot_swap_under_load_keeps_players_and_sessions(run_host, built: Built) -> None:
    host, slot = run_host("1.0.0")
    assert host.health()[1]["version"] == "1.0.0"

    # A long request that starts on 1.0.0 and is still running when the swap happens.
    slow: dict = {}

    def slow_request() -> None:
        conn = host.connection()
        try:
            slow["result"] = call(conn, "POST", "/play",
                                  {"session": "slowpoke", "action": "slow", "amount": 4000})
        finally:
            conn.close()

    slow_thread = threading.Thread(target=slow_request, daemon=True)
    slow_thread.start()
    for _ in range(3000):
        if host.health()[1]["in_flight"] >= 1:
            break
        time.sleep(0.01)
    else:
        raise AssertionError("the slow request never started")

    players = [Player(host, f"player-{i}") for i in range(4)]
    for p in players:
        p.start()
    for p in players:
        p.wait_for(lambda p=p: len(p.responses) >= 25, "got 25 responses on 1.0.0")

    # The agent's move: swap `current` atomically, then send the reload signal.
    activate(slot, built.dirs["1.1.0"])
    host.sighup()
    host.wait_version("1.1.0")
    slow_spanned_swap = slow_thread.is_alive()
    for p in players:
        count = len(p.responses)
        p.wait_for(lambda p=p, c=count: len(p.responses) >= c + 25 and
                   p.versions()[-1] == "1.1.0", "kept playing on 1.1.0")
    for p in players:
        p.stop.set()
    for p in players:
        p.thread.join(timeout=30)
        assert not p.thread.is_alive()
    slow_thread.join(timeout=30)

    for p in players:
        assert p.errors == [], p.errors                       # 0 failed requests
        assert len(p.sockets) == 1, "the client had to reconnect"  # 0 reconnects
        versions = p.versions()
        switch = versions.index("1.1.0")
        assert set(versions[:switch]) == {"1.0.0"} and set(versions[switch:]) == {"1.1.0"}
        assert switch >= 25
        # session state lives in the host and carried straight across the swap
        assert [r["plays"] for r in p.responses] == list(range(1, len(p.responses) + 1))
        assert p.responses[-1]["score"] == p.amounts
        status, session = host.request("GET", f"/session?id={p.session}")
        assert status == 200 and session["plays"] == len(p.responses)
        assert session["score"] == p.amounts

    # the in-flight request finished on the handler it started with
    status, body = slow["result"]
    assert status == 200 and body["version"] == "1.0.0", body
    if not slow_spanned_swap:
        pytest.fail("the slow request ended before the swap; the in-flight check proved nothing")

    code, health = host.health()
    assert code == 200 and health["status"] == "ok" and health["version"] == "1.1.0"
    assert health["failed"] == 0 and health["refusals"] == 0
    assert health["loaded_versions"] == ["1.0.0", "1.1.0"]
    assert health["plugin_path"] == "arena-1.1.0"


def test_admin_reload_and_path_watch(run_host, built: Built) -> None:
    host, slot = run_host("1.0.0", "-watch", "20ms", "-restart-after", "2")
    assert host.health()[1]["restart_recommended"] is False
    activate(slot, built.dirs["1.1.0"])          # no signal: the watcher notices
    health = host.wait_version("1.1.0")
    # Go never unloads a plugin: the host says when a restart should be planned
    assert health["plugins_mapped"] == 2 and health["restart_recommended"] is True
    status, body = host.request("POST", "/admin/reload")   # nothing changed: a no-op
    assert status == 200 and body == {"changed": False, "version": "1.1.0",
                                      "release": str(built.dirs["1.1.0"].resolve())}


# --- broken release and rollback --------------------------------------------------------------


def test_broken_release_reports_unhealthy_and_rollback_restores(run_host, built: Built) -> None:
    host, slot = run_host("1.1.0")
    activate(slot, built.dirs["1.2.0"])
    status, body = host.request("POST", "/admin/reload")
    assert status == 200 and body["changed"] and body["version"] == "1.2.0"

    code, health = host.health()
    assert code == 503
    assert health["status"] == "unhealthy" and health["version"] == "1.2.0"
    assert "broken build" in health["error"]
    status, _ = host.request("GET", "/health?version=1.1.0")
    assert status == 503
    status, played = host.request("POST", "/play", {"session": "s", "amount": 3})
    assert status == 200 and played["version"] == "1.2.0"  # players are still served

    # The agent's rollback: back to the previous release, which this process already loaded
    # (plugin.Open hands back the loaded plugin; nothing new is mapped).
    activate(slot, built.dirs["1.1.0"])
    host.sighup()
    health = host.wait_version("1.1.0")
    assert health["status"] == "ok"
    assert health["loaded_versions"] == ["1.1.0", "1.2.0", "1.1.0"]
    status, played = host.request("POST", "/play", {"session": "s", "amount": 4})
    assert status == 200 and played["version"] == "1.1.0" and played["score"] == 7


# --- the ABI check ----------------------------------------------------------------------------


def test_check_abi_cli_accepts_matching_and_refuses_mismatched(built: Built) -> None:
    ok = check_abi(built, built.dirs["1.1.0"])
    assert ok.returncode == 0, ok.stderr
    assert "ABI ok: arena 1.1.0 (plugin path arena-1.1.0)" in ok.stdout

    bad = check_abi(built, built.dirs["1.3.0"])
    assert bad.returncode == 1
    assert f"different version of package {API}" in bad.stderr


def test_mismatched_plugin_is_refused_before_load(run_host, built: Built) -> None:
    host, slot = run_host("1.0.0")
    activate(slot, built.dirs["1.3.0"])
    host.sighup()
    health = host.wait_reload_attempts(2)     # start-up load + this one
    assert health["refusals"] == 1
    assert health["version"] == "1.0.0" and health["status"] == "ok"
    assert f"different version of package {API}" in health["last_reload_error"]
    status, body = host.request("POST", "/play", {"session": "s", "amount": 1})
    assert status == 200 and body["version"] == "1.0.0"
    status, body = host.request("POST", "/admin/reload")
    assert status == 409 and "ABI check refused" in body["error"]
    # never handed to the dynamic loader
    assert "plugin.Open" in host.log.read_text()
    assert str(built.dirs["1.3.0"]) not in "\n".join(
        line for line in host.log.read_text().splitlines() if "plugin.Open" in line)

    # and the process is still fit to load a good version afterwards
    activate(slot, built.dirs["1.1.0"])
    host.sighup()
    assert host.wait_version("1.1.0")["status"] == "ok"


def test_faked_abi_facts_in_the_manifest_are_refused(built: Built, tmp_path: Path) -> None:
    def variant(name: str, **abi_changes) -> Path:
        target = tmp_path / name
        shutil.copytree(built.dirs["1.1.0"], target)
        manifest = json.loads((target / "manifest.json").read_text())
        manifest["abi"].update(abi_changes)
        (target / "manifest.json").write_text(json.dumps(manifest))
        return target

    cases = {
        "go": (variant("go", go_version="go1.18.10"), "Go version: plugin built with go1.18.10"),
        "mod": (variant("mod", modules={API: "v1.0.1"}), f"shared module {API}"),
        "arch": (variant("arch", goarch="arm64"), "goarch: plugin has arm64"),
        "path": (variant("path", plugin_path="arena-9.9.9"), "plugin path in the file"),
    }
    for name, (release, message) in cases.items():
        result = check_abi(built, release)
        assert result.returncode == 1, name
        assert message in result.stderr, (name, result.stderr)


def test_same_plugin_path_from_another_file_is_refused(run_host, built: Built,
                                                       tmp_path: Path) -> None:
    host, slot = run_host("1.0.0")
    copy = shutil.copytree(built.dirs["1.0.0"], tmp_path / "1.0.0-again")
    activate(slot, copy)
    status, body = host.request("POST", "/admin/reload")
    assert status == 409 and "already loaded" in body["error"]
    assert host.health()[1]["version"] == "1.0.0"


def test_host_without_a_plugin_starts_unhealthy(built: Built, hosts: list[HostProcess],
                                                tmp_path: Path) -> None:
    h = start_host(built.host, tmp_path / "nowhere" / "current", tmp_path / "h")
    hosts.append(h)
    code, health = h.health()
    assert code == 503 and health["status"] == "unhealthy"
    status, _ = h.request("POST", "/play", {"session": "s"})
    assert status == 503
