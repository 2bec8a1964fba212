"""Issue 7, item 4: the Go hot-reload path end to end, with real processes only.

Two `hotrelease agent serve` processes on loopback, each managing its own `gamehost` (the
example Go game server) through a pre-activation ABI check (`gamehost -check-abi
{release_dir}`), a reload URL and a health URL. Releases of the example Go plugin are built
with `hotrelease build`, signed with `hotrelease sign` and rolled out with `hotrelease
publish`. Player threads keep playing on both hosts over persistent HTTP connections for the
whole time and count every failed request and every reconnect:

1. v1.0.0 reaches both hosts (which started with no game logic at all);
2. v1.1.0 (a real logic change) replaces it: 0 failed requests, 0 reconnects, every
   player's session (plays, score) carried straight across the swap;
3. a broken v1.2.0 (its health check fails) is rolled back to v1.1.0 automatically by each
   agent, publish exits 4, still 0 failed requests and 0 reconnects;
4. a v1.3.0 built against another version of the shared API module is refused by the
   agent's pre-check before `current` moves: the host is never even asked to reload, so
   `plugin.Open` is never attempted for it, and nothing on the node changes except the
   stored (never activated) release.

No timing figures are asserted here; bench/bench_go_reload.py measures them.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    AGENT_TOKEN,
    AgentProcess,
    GitRepo,
    agent_toml,
    free_port,
    read_history,
    wait_until,
)
from gohelpers import (
    API,
    EPOCH,
    HostProcess,
    build_host,
    copy_sources,
    go_env,
    go_marks,
    start_host,
)

from hotrelease.errors import EXIT_ABORTED, EXIT_OK

pytestmark = go_marks()

PLUGIN = "arena"
NODES = 2
PLAYERS_PER_HOST = 3

# One stage over the whole fleet, no approvals, an always-open window: every node takes
# part in every step (both agents roll the broken release back on their own).
FLEET_POLICY = """
[[windows]]
name = "always"
days = ["mon-sun"]
start = "00:00"
duration = "1d"
timezone = "UTC"

[rollout]
poll_interval = 0.1
retry_backoff = 0.05
retries = 1

[[rollout.scheduled]]
name = "all"
percent = 100

[[rollout.urgent]]
name = "all"
percent = 100

[policy]
approval_classes = []
"""

# The v1.1.0 game logic differs from v1.0.0 in code, not only in its stamped version.
OLD_MESSAGE = 'Message: fmt.Sprintf("arena %s: %s by %d", Version, actionName(r.Action), r.Amount)}'
NEW_MESSAGE = ('Message: fmt.Sprintf("arena %s: %s by %d, combo %d", Version, '
               "actionName(r.Action), r.Amount, s.Plays)}")


# --- players ----------------------------------------------------------------------------------


@dataclass
class Player:
    """One client on one persistent HTTP/1.1 connection, playing until stopped. Any failed
    request is counted (and the player carries on); any new connection after the first -
    including the silent re-open http.client does after the server closed the socket - is a
    reconnect."""

    host: HostProcess
    session: str
    responses: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    reconnects: int = 0
    amounts: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self.run, name=self.session, daemon=True)

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.host.host, self.host.port, timeout=30)
        sock: object | None = None
        i = 0
        try:
            while not self.stop.is_set():
                i += 1
                amount = i % 7 + 1
                body = json.dumps({"session": self.session, "action": "hit",
                                   "amount": amount})
                try:
                    conn.request("POST", "/play", body=body,
                                 headers={"Content-Type": "application/json"})
                    if sock is not None and conn.sock is not sock:
                        self.reconnects += 1
                    sock = conn.sock
                    resp = conn.getresponse()
                    raw = resp.read()
                    if resp.will_close:
                        self.failures.append(f"request {i}: the server is closing the "
                                             "connection")
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    self.failures.append(f"request {i}: {exc!r}")
                    conn.close()
                    time.sleep(0.05)
                    continue
                if resp.status != 200:
                    self.failures.append(f"request {i}: HTTP {resp.status} {raw[:200]!r}")
                    continue
                self.amounts += amount
                self.responses.append(json.loads(raw))
                time.sleep(0.003)  # leave CPU for the agents, hosts and publish
        finally:
            conn.close()

    def versions(self) -> list[str]:
        return [r["version"] for r in self.responses]


class Players:
    def __init__(self, hosts: list[HostProcess]) -> None:
        self.all = [Player(h, f"node{n}-player{i}") for n, h in enumerate(hosts)
                    for i in range(PLAYERS_PER_HOST)]

    def start(self) -> None:
        for p in self.all:
            p.thread.start()

    def stop(self) -> None:
        for p in self.all:
            p.stop.set()
        for p in self.all:
            p.thread.join(timeout=30)

    def marks(self) -> list[int]:
        return [len(p.responses) for p in self.all]

    def play_on(self, what: str, count: int = 20) -> list[int]:
        """Wait until every player got `count` more responses; returns the marks before."""
        marks = self.marks()

        def progressed() -> bool:
            self.assert_clean()
            return all(len(p.responses) >= m + count for p, m in zip(self.all, marks,
                                                                     strict=True))

        wait_until(progressed, 60, what)
        return marks

    def assert_clean(self) -> None:
        for p in self.all:
            assert p.failures == [], f"{p.session}: failed requests {p.failures[:3]}"
            assert p.reconnects == 0, f"{p.session}: reconnected {p.reconnects} time(s)"
            assert p.thread.is_alive(), f"{p.session}: client thread died"

    def served_since(self, marks: list[int]) -> dict[str, set[str]]:
        # skip the one response that may have been in flight when the mark was taken
        return {p.session: set(p.versions()[m + 1:]) for p, m in zip(self.all, marks,
                                                                      strict=True)}


# --- the scene ------------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    agent: AgentProcess
    host: HostProcess

    def slot(self) -> dict:
        with self.agent.client() as client:
            return client.plugin(PLUGIN)

    def health(self) -> dict:
        return self.host.health()[1]

    def history(self) -> list[dict]:
        return read_history(self.agent.data_dir, PLUGIN)

    def snapshot(self) -> dict[str, object]:
        return self.agent.snapshot()


@pytest.fixture
def processes() -> Iterator[list[object]]:
    """Everything started by the test; all killed at teardown, players stopped first."""
    started: list[object] = []
    yield started
    for proc in reversed(started):
        if isinstance(proc, Players):
            proc.stop()
    for proc in reversed(started):
        if not isinstance(proc, Players):
            proc.stop()  # type: ignore[attr-defined]


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_go_hot_reload_end_to_end(tmp_path: Path, cli, processes: list) -> None:
    now = utc_now()

    # 1. The host, once; the plugin releases, built and signed the way CI does. --------------
    gamehost = build_host(tmp_path / "bin" / "gamehost")
    repo = GitRepo(tmp_path / "src")
    repo.path.mkdir()
    repo.git("init", "-q", "-b", "main")
    plugin_dir = copy_sources(repo.path)
    (repo.path / ".gitignore").write_text("dist/\n*.so\n")
    repo.commit("arena game logic")
    (tmp_path / "keys").mkdir()
    keygen = cli("keygen", "--out", tmp_path / "keys" / "release")
    assert keygen.code == EXIT_OK, keygen.stderr
    key = tmp_path / "keys" / "release.key"
    pub = tmp_path / "keys" / "release.pub"

    def release(version: str, goflags: str = "") -> Path:
        out = tmp_path / "dist" / version
        built = cli("build", "--version", version, "--out", out, "--now", now, "--json",
                    cwd=plugin_dir, env=go_env(SOURCE_DATE_EPOCH=EPOCH, GOFLAGS=goflags),
                    timeout=300)
        assert built.code == EXIT_OK, f"build {version}: {built.stderr}"
        manifest = Path(json.loads(built.stdout)["manifest"])
        signed = cli("sign", manifest, "--key", key)
        assert signed.code == EXIT_OK, signed.stderr
        return manifest

    v100 = release("1.0.0")
    main_go = plugin_dir / "main.go"
    source = main_go.read_text()
    assert OLD_MESSAGE in source, "examples/go-plugin/main.go changed: update this test"
    repo.commit("combo counter in the message", {"go-plugin/main.go":
                                                 source.replace(OLD_MESSAGE, NEW_MESSAGE)})
    v110 = release("1.1.0")
    v120 = release("1.2.0", "-tags=arena_broken")                     # health check fails
    v130 = release("1.3.0", "-modfile=testdata/abi-mismatch.mod")     # other gameapi version
    assert json.loads(v130.read_text())["abi"]["modules"][API] == "v1.1.0"

    # 2. Two nodes: an agent and its own game host each. --------------------------------------
    nodes: list[Node] = []
    for n in range(NODES):
        root = tmp_path / f"node{n}"
        data_dir = root / "data"
        # Started before any plugin exists: it serves, unhealthy, with no game logic.
        host = start_host(gamehost, data_dir / "plugins" / PLUGIN / "current", root / "host")
        processes.append(host)
        assert host.health()[0] == 503
        base = f"http://127.0.0.1:{host.port}"
        slot: str | dict[str, Any]  # the slot's config here, its state further down
        slot = (
            f"[plugins.{PLUGIN}]\n"
            f'precheck = {{ command = ["{gamehost}", "-check-abi", "{{release_dir}}"], '
            "timeout = 30 }\n"
            f'reload = {{ url = "{base}/admin/reload", timeout = 20 }}\n'
            f'health = {{ url = "{base}/health", timeout = 2, interval = 0.05, retries = 10, '
            "max_consecutive_errors = 2, min_healthy_seconds = 0.3, require_version = true }\n")
        port = free_port()
        agent = AgentProcess(root, agent_toml(data_dir, port, [pub], plugins=slot), port)
        processes.append(agent)
        agent.start()
        nodes.append(Node(f"node-{n}", agent, host))

    # The project config: the fleet, the trusted key, the window, the rollout.
    config = plugin_dir / "hotrelease.toml"
    fleet = "".join(f'\n[[nodes]]\nname = "{node.name}"\nurl = "{node.agent.url}"\n'
                    for node in nodes)
    config.write_text(f'{config.read_text()}\n[trust]\nrelease_keys = ["{pub}"]\n'
                      f"{FLEET_POLICY}{fleet}")
    repo.commit("fleet config")

    def publish(manifest: Path):
        return cli("publish", manifest, "--all-stages", "--now", utc_now(), cwd=plugin_dir,
                   env={"HOTRELEASE_AGENT_TOKEN": AGENT_TOKEN}, timeout=180)

    def fleet_state() -> tuple[dict[str, str | None], dict[str, str | None]]:
        return ({node.name: node.slot().get("current") for node in nodes},
                {node.name: node.health().get("version") for node in nodes})

    # 3. Initial rollout. ------------------------------------------------------------------------
    first = publish(v100)
    assert first.code == EXIT_OK, first.stderr + first.stdout
    assert fleet_state() == ({n.name: "1.0.0" for n in nodes}, {n.name: "1.0.0" for n in nodes})
    for node in nodes:
        assert node.host.health()[0] == 200

    # 4. Players on both hosts, for everything that follows. ----------------------------------
    players = Players([node.host for node in nodes])
    processes.append(players)
    players.start()
    players.play_on("players to get going on 1.0.0")

    # 5. v1.1.0: new logic everywhere, nobody notices. --------------------------------------
    upgrade = publish(v110)
    assert upgrade.code == EXIT_OK, upgrade.stderr + upgrade.stdout
    marks = players.play_on("players to keep playing after the upgrade")
    players.assert_clean()
    assert fleet_state() == ({n.name: "1.1.0" for n in nodes}, {n.name: "1.1.0" for n in nodes})
    assert all(v == {"1.1.0"} for v in players.served_since(marks).values()), \
        players.served_since(marks)
    for p in players.all:
        versions = p.versions()
        switch = versions.index("1.1.0")
        assert set(versions[:switch]) == {"1.0.0"}
        assert "combo" not in p.responses[switch - 1]["message"]
        assert p.responses[-1]["message"].endswith(f"combo {p.responses[-1]['plays']}")
    for node in nodes:
        history = node.history()
        activation = [r for r in history if r.get("action") == "activate"
                      and r.get("version") == "1.1.0"]
        assert [r["result"] for r in activation] == ["activated"]

    # 6. Broken v1.2.0: the agents see its health fail and roll back to v1.1.0 on their own. --
    broken = publish(v120)
    assert broken.code == EXIT_ABORTED, broken.stderr + broken.stdout
    marks = players.play_on("players to keep playing after the rollback")
    players.assert_clean()
    assert fleet_state() == ({n.name: "1.1.0" for n in nodes}, {n.name: "1.1.0" for n in nodes})
    assert all(v == {"1.1.0"} for v in players.served_since(marks).values()), \
        players.served_since(marks)
    for node in nodes:
        activation = [r for r in node.history() if r.get("action") == "activate"
                      and r.get("version") == "1.2.0"]
        assert [r["result"] for r in activation] == ["rolled_back"], activation
        assert activation[0]["reason"].startswith("health check failed"), activation
        health = node.health()
        assert health["status"] == "ok" and health["version"] == "1.1.0"
        # 1.2.0 was loaded and served (players were not dropped), then 1.1.0 again - the
        # plugin this process already had, so nothing new was mapped by the rollback
        assert health["loaded_versions"] == ["1.0.0", "1.1.0", "1.2.0", "1.1.0"]
        assert health["plugins_mapped"] == 3 and health["failed"] == 0

    # 7. v1.3.0, built against another gameapi: refused by the pre-check, before any load. ---
    before = {node.name: (node.snapshot(), node.slot(), node.health()) for node in nodes}
    logs = {node.name: node.host.log.read_text() for node in nodes}
    mismatch = publish(v130)
    # (publish reports the refusal as a failed stage: exit 4 today; any non-zero will do)
    assert mismatch.code != EXIT_OK, mismatch.stderr + mismatch.stdout
    for node in nodes:
        assert f"{node.name}: failed (agent {node.agent.url}: precheck refused " \
            f"{PLUGIN}@1.3.0 before the switch" in mismatch.error_line, mismatch.stderr
    marks = players.play_on("players to keep playing after the refusal")
    players.assert_clean()
    assert all(v == {"1.1.0"} for v in players.served_since(marks).values())
    for node in nodes:
        snap, slot_before, health_before = before[node.name]
        refused = [r for r in node.history() if r.get("action") == "activate"
                   and r.get("version") == "1.3.0"]
        assert [(r["result"], r["code"]) for r in refused] == [("refused", "precheck_failed")]
        assert f"different version of package {API}" in refused[0]["reason"], refused
        # nothing changed on the node but the stored (verified, never activated) release
        after = node.snapshot()
        stored = f"releases/{PLUGIN}/1.3.0"
        new_keys = {k for k in after if k not in snap}
        assert new_keys and all(k == stored or k.startswith(stored + "/") for k in new_keys)
        assert {k: v for k, v in after.items() if k not in new_keys} == snap
        slot = node.slot()
        assert slot["current"] == "1.1.0" and slot["state"] == slot_before["state"]
        # the host was never asked to reload, so plugin.Open never saw the mismatched file
        health = node.health()
        for key_ in ("version", "reloads", "refusals", "loaded_versions", "plugins_mapped"):
            assert health[key_] == health_before[key_], key_
        log = node.host.log.read_text()
        assert log.startswith(logs[node.name])
        assert "1.3.0" not in log, log[len(logs[node.name]):]

    # The whole run: every request answered, on one connection per player, with its
    # session carried across three swaps.
    players.stop()
    for p in players.all:
        assert p.failures == [] and p.reconnects == 0
        assert [r["plays"] for r in p.responses] == list(range(1, len(p.responses) + 1))
        assert p.responses[-1]["score"] == p.amounts
        runs = [v for i, v in enumerate(p.versions()) if i == 0 or p.versions()[i - 1] != v]
        assert runs in (["1.0.0", "1.1.0", "1.2.0", "1.1.0"], ["1.0.0", "1.1.0"]), runs
        host = p.host
        status, session = host.request("GET", f"/session?id={p.session}")
        assert status == 200
        assert (session["plays"], session["score"]) == (len(p.responses), p.amounts)
    for node in nodes:
        assert node.health()["failed"] == 0
