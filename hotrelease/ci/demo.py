"""`hotrelease demo`: the whole product on this machine, in a temp dir, in under a minute.

Starts a small fleet of real agents (each managing a Python plugin host), then walks the
example plugin through: first rollout with an approval, a feature release that waits for its
maintenance window, a signed security patch that takes the urgent lane straight through, and
a broken release that the canary catches and rolls back. Everything it starts, it stops.

Drives the same release session as the CLI (`rollout.session`); how a publish report and the
status table read is the CLI's (`commands.render`), handed in by `commands.release`, since
`ci` sits below `commands`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from hotrelease.errors import HotreleaseError
from hotrelease.trust.keys import generate_keypair, load_private_key
from hotrelease.trust.manifest import sign_manifest

Say = Callable[[str], None]
Lines = Callable[[dict[str, Any]], list[str]]  # a report or status -> the CLI's lines

DEMO_CONFIG = """
[trust]
release_keys = ["{keys}/release.pub"]
security_keys = ["{keys}/security.pub"]

[[windows]]
name = "nightly"
days = ["mon-sun"]
start = "02:00"
duration = "2h"
timezone = "UTC"

[rollout]
poll_interval = 0.1
retries = 1
retry_backoff = 0.1

[[rollout.scheduled]]
name = "canary"
nodes = 1
bake_seconds = 1

[[rollout.scheduled]]
name = "all"
percent = 100
approval = true

[[rollout.urgent]]
name = "canary"
nodes = 1
bake_seconds = 0.5

[[rollout.urgent]]
name = "all"
percent = 100
"""


def example_dir(name: str = "python-plugin") -> Path:
    return Path(str(resources.files("hotrelease.examples") / name))


def copy_example(target: Path, name: str = "python-plugin") -> Path:
    shutil.copytree(example_dir(name), target,
                    ignore=shutil.ignore_patterns("dist", "__pycache__", "*.pyc"))
    return target


def _git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "demo", "GIT_AUTHOR_EMAIL": "demo@localhost",
           "GIT_COMMITTER_NAME": "demo", "GIT_COMMITTER_EMAIL": "demo@localhost"}
    subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)


@contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Demo:
    def __init__(self, base: Path, say: Say, nodes: int, *, publish_lines: Lines,
                 status_lines: Lines, notice: Say) -> None:
        self.base, self.say, self.count = base, say, nodes
        self.publish_lines, self.status_lines, self.notice = publish_lines, status_lines, notice
        self.keys = base / "keys"
        self.repo = base / "greeter"

    def run(self) -> None:
        from hotrelease.rollout.localfleet import LocalFleet

        self.keys.mkdir()
        release = generate_keypair(self.keys / "release")
        generate_keypair(self.keys / "security")
        self.say(f"keys: throwaway release key {release.keyid[:12]}, security-team key")
        fleet = LocalFleet(self.base / "fleet", self.count, [self.keys / "release.pub"],
                           (self.keys / "security.pub",))
        self.say(f"starting {self.count} agents, each managing a Python plugin host ...")
        with fleet.start(), _env(HOTRELEASE_AGENT_TOKEN=fleet.token, CI="true"):
            self.fleet = fleet
            self._make_repo(fleet.inventory_toml())
            self.status("fleet is up, nothing deployed")
            self.steps()
        self.say(f"stopped {self.count} agents and {self.count} hosts; nothing left running")

    def _make_repo(self, inventory: str) -> None:
        copy_example(self.repo)
        config = self.repo / "hotrelease.toml"
        config.write_text(config.read_text() + DEMO_CONFIG.format(keys=self.keys) + inventory)
        (self.repo / ".gitignore").write_text("dist/\n")
        _git(self.repo, "init", "-q", "-b", "main")
        _git(self.repo, "add", "-A")
        _git(self.repo, "commit", "-q", "-m", "greeter plugin")

    # --- the story ------------------------------------------------------------------------
    def steps(self) -> None:
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        inside = today + timedelta(hours=2, minutes=30)  # inside the nightly window
        outside = today + timedelta(hours=12)

        self.say("\n== 1. first release 1.0.0: canary, then a release manager approves 'all'")
        v100 = self.build("1.0.0")
        self.publish(v100, inside)
        self.approve(v100, "all", inside)
        self.publish(v100, inside)
        self.status("1.0.0 everywhere")
        _git(self.repo, "tag", "v1.0.0")

        self.say("\n== 2. feature release 1.1.0: scheduled lane, waits for its window")
        v110 = self.build("1.1.0")
        self.publish(v110, outside)
        later = inside + timedelta(days=1)
        self.say(f"   ... it is now {later:%Y-%m-%d %H:%M}Z, inside the window")
        self.publish(v110, later)
        self.approve(v110, "all", later)
        self.publish(v110, later)
        self.status("1.1.0 everywhere")
        _git(self.repo, "tag", "v1.1.0")

        self.say("\n== 3. security patch 1.1.1, labelled by the security team: urgent lane")
        v111 = self.build("1.1.1")
        self.label(v111, outside)
        self.publish(v111, outside, all_stages=True)
        self.status("1.1.1 everywhere, outside any window, no approval needed")
        _git(self.repo, "tag", "v1.1.1")

        self.say("\n== 4. broken release 1.2.0: the canary's health check fails")
        v120 = self.build("1.2.0", broken=True)
        self.publish(v120, later + timedelta(days=1))
        self.status("the canary rolled back: 1.1.1 everywhere")

    # --- helpers ----------------------------------------------------------------------------
    def build(self, version: str, broken: bool = False) -> Path:
        from hotrelease.build.artifact import build_release
        from hotrelease.config.project import load_config

        env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
        if broken:
            env["GREETER_BROKEN"] = "1"
        result = build_release(load_config(self.repo / "hotrelease.toml"), version=version,
                               out_dir=None, allow_dirty=False, now=datetime.now(UTC), env=env)
        sign_manifest(result.manifest_path, load_private_key(self.keys / "release.key"))
        self.say(f"   build + sign: {result.bundle_path.name} "
                 f"(sha256 {result.manifest.bundle.sha256[:12]}…)")
        return result.manifest_path

    def session(self, manifest: Path, now: datetime):  # -> FleetSession
        from hotrelease.rollout.session import FleetSession

        return FleetSession.open(manifest, config=self.repo / "hotrelease.toml", now=now)

    def publish(self, manifest: Path, now: datetime, all_stages: bool = False) -> None:
        session = self.session(manifest, now)
        d = session.decision
        self.say(f"   hotrelease publish {manifest.name}   [{d.release_class}, "
                 f"{d.lane} lane, at {now:%Y-%m-%d %H:%M}Z]")
        try:
            report = session.publish(stage=None, all_stages=all_stages, plan_digest=None,
                                     dry_run=False, wait=False, notice=self.notice)
        except HotreleaseError as exc:
            self.say(f"   -> {type(exc).__name__} (exit {exc.exit_code}): {exc}")
            return
        for line in self.publish_lines(report):
            self.say(f"   -> {line}")

    def approve(self, manifest: Path, stage: str, now: datetime) -> None:
        result = self.session(manifest, now).approve(stage, by="release-manager",
                                                     private_key=None, valid_hours=24)
        self.say(f"   hotrelease approve --stage {stage}: recorded on "
                 f"{len(result['recorded_on'])} agents (by {result['approved_by']})")

    def label(self, manifest: Path, now: datetime) -> None:
        from hotrelease.trust.labels import label_path_for, make_label, save_label, sign_label
        from hotrelease.trust.manifest import load_manifest

        m = load_manifest(manifest)
        label = make_label(name=m.name, version=m.version, bundle_sha256=m.bundle.sha256,
                           advisory="CVE-2026-4242", severity="high", now=now, expires_days=7)
        envelope, _ = sign_label(label, load_private_key(self.keys / "security.key"))
        save_label(label, envelope, label_path_for(m.name, m.version, manifest.parent))
        self.say("   hotrelease label security --advisory CVE-2026-4242 --severity high "
                 "(signed by the security key)")

    def status(self, title: str) -> None:
        from hotrelease.rollout.session import fleet_status

        result = fleet_status(config=self.repo / "hotrelease.toml", plugin=None)
        serving = {n.name: n.serving() for n in self.fleet.nodes}
        self.say(f"   status: {title}")
        for line in self.status_lines(result):
            node = line.split(" ", 1)[0]
            extra = "SERVING" if node == "NODE" else (serving.get(node) or "-")
            self.say(f"     {line:<92} {extra}")


def run_demo(say: Say, nodes: int = 3, *, publish_lines: Lines, status_lines: Lines,
             notice: Say = lambda _: None) -> None:
    """`say`: the story (stdout); `publish_lines`, `status_lines`: how a publish report and
    the status table read; `notice`: the session's warnings and notes (stderr)."""
    with tempfile.TemporaryDirectory(prefix="hotrelease-demo-") as tmp:
        say(f"demo workspace: {tmp}")
        Demo(Path(tmp), say, nodes, publish_lines=publish_lines, status_lines=status_lines,
             notice=notice).run()
