"""The GitLab pipelines, run for real with gitlab-ci-local against real agents on loopback.

Every repository here is made by `hotrelease init` (flags only); the CI variables are the two
a team sets by hand (plus, where a scenario needs it, the security team's label or GitLab's
CI_DEPLOY_FREEZE). See tests/pipelinehelpers.py for what gitlab-ci-local does and does not
emulate.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import requires_go
from pipelinehelpers import (
    GCL,
    PIPELINE_FILE,
    REPO_ROOT,
    PluginRepo,
    git,
    hotrelease,
    make_plugin_repo,
    run_gcl,
)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(GCL is None, reason="gitlab-ci-local not installed "
                                                     "(.ci/run installs it)")]

CHILD = "hotrelease-rollout"


@pytest.fixture
def plugin(tmp_path: Path):
    repos: list[PluginRepo] = []

    def make(*, start: bool = True, **kwargs) -> PluginRepo:
        repo = make_plugin_repo(tmp_path, start=False, **kwargs)
        repos.append(repo)  # registered before anything starts: teardown stops it all
        if start:
            repo.start()
        return repo

    yield make
    for repo in repos:
        repo.stop()


# --- schema: every pipeline file and every generated child ------------------------------------


def _schema_check(tmp_path: Path, yaml_text: str, name: str) -> str:
    repo = tmp_path / f"schema-{name}"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / ".gitlab-ci.yml").write_text(yaml_text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "schema")
    result = run_gcl(repo, "--list-all", home=tmp_path / "home",
                     variables={"CI_COMMIT_TAG": "v1.0.0"})
    assert result.code == 0, result.output
    assert "json schema validated" in result.output, result.output
    return result.output


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "pipelines").glob("*.yml")),
                         ids=lambda p: p.name)
def test_every_pipeline_file_passes_the_schema(tmp_path: Path, path: Path) -> None:
    listing = _schema_check(tmp_path, path.read_text(), path.stem)
    for job in ("hotrelease-build", "hotrelease-sign", "hotrelease-verify",
                "hotrelease-classify", "hotrelease-route", "hotrelease-rollout"):
        assert job in listing


def test_this_projects_own_ci_passes_the_schema(tmp_path: Path) -> None:
    listing = _schema_check(tmp_path, (REPO_ROOT / ".gitlab-ci.yml").read_text(), "self")
    for job in ("ruff", "mypy", "tests", "wheel"):
        assert job in listing


def test_generated_children_pass_the_schema(tmp_path: Path) -> None:
    from hotrelease.ci.pipeline import ChildSpec, StageJob, render_child

    stages = [StageJob("canary", False, ("n1",)), StageJob("wave-1", True, ("n2",)),
              StageJob("all", True, ("n3",))]
    variants = {
        "urgent": ChildSpec("urgent", "dist/g-1.0.1.manifest.json", "g 1.0.1", "sha256:ab",
                            "security", stages[:1] + stages[2:]),
        "scheduled": ChildSpec("scheduled", "dist/g-1.1.0.manifest.json", "g 1.1.0",
                               "sha256:cd", "feature", stages),
        "frozen": ChildSpec("scheduled", "dist/g-1.1.0.manifest.json", "g 1.1.0", None,
                            "feature", stages, deploy_freeze=True),
        "none": ChildSpec("none", "dist/g-1.0.0.manifest.json", "g 1.0.0"),
    }
    for name, spec in variants.items():
        listing = _schema_check(tmp_path, render_child(spec), name)
        if name == "scheduled":
            assert "hotrelease-publish-canary" in listing
            assert "hotrelease-approve-wave-1" in listing
        if name == "frozen":
            assert "hotrelease-hold" in listing


# --- the lanes, end to end ------------------------------------------------------------------


def test_init_then_tag_publishes_canary_and_manual_approval_promotes_the_rest(
        plugin) -> None:
    """`init` in an empty repo + the two CI variables: the tag pipeline builds, signs,
    verifies, classifies and publishes the canary; playing the manual approval job (as a
    release manager) approves and publishes the next stage to every other node."""
    repo = plugin(nodes=3)
    repo.set_ci_variables()
    repo.commit("greeter plugin, from hotrelease init", tag="v1.0.0")

    run = repo.pipeline("v1.0.0")
    assert run.code == 0, run.output
    for job in ("hotrelease-build", "hotrelease-sign", "hotrelease-verify",
                "hotrelease-classify", "hotrelease-route", "hotrelease-rollout",
                "hotrelease-publish-canary"):
        assert run.status(job) == "PASS", f"{job}\n{run.output}"
    assert "HOTRELEASE_LANE=scheduled" in run.log("hotrelease-classify")
    assert not run.started("hotrelease-approve-all")  # manual: waits for a release manager
    versions = repo.versions()
    assert sorted(v or "-" for v in versions.values()) == ["-", "-", "1.0.0"], versions

    child = repo.path / ".gitlab-ci-local" / "includes" / "triggers" / f"{CHILD}.yml"
    approve = run_gcl(repo.path, "--file", str(child.relative_to(repo.path)),
                      "--manual", "hotrelease-approve-all", "hotrelease-approve-all",
                      home=repo.home)
    assert approve.status("hotrelease-approve-all") == "PASS", approve.output
    assert set(repo.versions().values()) == {"1.0.0"}
    log = approve.log("hotrelease-approve-all")
    assert "approved stage all" in log, log
    # The fleet is the ledger: the approval (who, which stage, which digest) is on the agents.
    ledger = json.dumps([repo.history(node) for node in repo.agents])
    assert '"all"' in ledger and "approv" in ledger

    # The next window's scheduled pipeline finds nothing pending: no stage runs twice.
    nightly = repo.pipeline(None, variables={"CI_PIPELINE_SOURCE": "schedule"})
    assert nightly.code == 0, nightly.output
    assert "nothing pending" in nightly.log("hotrelease-hold"), nightly.output
    assert not nightly.started("hotrelease-publish-canary")


def test_signed_security_patch_takes_the_urgent_lane_to_every_node(plugin, tmp_path) -> None:
    repo = plugin(nodes=3, window="sun 03:00 1h UTC")  # far from "now" most of the week
    # init made the security team's key pair and wired its public half into hotrelease.toml
    # and deploy/agent.toml; the private half goes to the team and stays offline.
    (repo.path / ".hotrelease" / "security.key").rename(tmp_path / "security.key")
    notified = tmp_path / "notified.json"
    repo.edit("hotrelease.toml", "# [notify]\n",
              f'[notify]\ncommand = ["sh", "-c", "cat > {notified}"]\n')
    repo.set_ci_variables()
    repo.commit("greeter plugin", tag="v1.0.0")
    # The fleet runs 1.0.0, released in last Sunday's window by a release manager.
    window = json.loads(hotrelease("windows", "-n", "1", "--json", cwd=repo.path).stdout)
    inside = window["windows"][0]["start"].replace(":00:00Z", ":30:00Z")
    ops = {"HOTRELEASE_AGENT_TOKEN": repo.agent_token}
    base = json.loads(hotrelease("build", "--json", cwd=repo.path).stdout)["manifest"]
    hotrelease("sign", base, "--key", repo.path / ".hotrelease" / "release.key", cwd=repo.path)
    hotrelease("approve", base, "--stage", "all", "--by", "rm", "--now", inside,
               cwd=repo.path, env=ops)
    hotrelease("publish", base, "--all-stages", "--now", inside, cwd=repo.path, env=ops)
    assert set(repo.versions().values()) == {"1.0.0"}
    repo.commit("fix: sanitize player names", tag="v1.0.1")

    # The security team rebuilds the tag (reproducible: same digest as CI) and signs a label.
    out = tmp_path / "sec-build"
    built = json.loads(hotrelease("build", "--out", out, "--json", cwd=repo.path).stdout)
    label = tmp_path / "label.json"
    hotrelease("label", "security", "--name", "greeter", "--version", "1.0.1",
               "--bundle-sha256", built["sha256"], "--advisory", "CVE-2026-4242",
               "--severity", "high", "--key", tmp_path / "security.key", "--out", label,
               cwd=repo.path)

    # Handed in when running the tag's pipeline: a File variable (a path) for the label, the
    # signature envelope as a plain variable (its content).
    run = repo.pipeline("v1.0.1", variables={
        "HOTRELEASE_SECURITY_LABEL": str(label),
        "HOTRELEASE_SECURITY_LABEL_SIG": Path(f"{label}.sig").read_text()})
    assert run.code == 0, run.output
    assert "HOTRELEASE_LANE=urgent" in run.log("hotrelease-classify"), run.output
    for job in ("hotrelease-notify", "hotrelease-publish-canary", "hotrelease-publish-all"):
        assert run.status(job) == "PASS", f"{job}\n{run.output}"
    order = [run.output.index(f"{j} starting shell") for j in
             ("hotrelease-notify", "hotrelease-publish-canary", "hotrelease-publish-all")]
    assert order == sorted(order)  # notify, canary, then everything: no window wait
    assert set(repo.versions().values()) == {"1.0.1"}
    assert json.loads(notified.read_text())["class"] == "security"
    # Every agent took the label: nobody can roll the fleet back onto the vulnerable version.
    hotrelease("sign", built["manifest"], "--key", repo.path / ".hotrelease" / "release.key",
               cwd=repo.path)
    back = hotrelease("rollback", built["manifest"], cwd=repo.path, env=ops, check=False)
    assert back.returncode == 1, back.stdout + back.stderr
    assert "CVE-2026-4242" in back.stdout and "security floor" in back.stdout
    assert set(repo.versions().values()) == {"1.0.1"}


def test_feature_outside_its_window_waits_and_says_when(plugin) -> None:
    far = (datetime.now(UTC) + timedelta(days=3)).strftime("%a").lower()
    repo = plugin(nodes=2, window=f"{far} 03:00 1h UTC")
    repo.set_ci_variables()
    repo.commit("greeter plugin", tag="v1.0.0")
    repo.edit("src/greetings.txt", "Hello", "Hello\nHowdy")
    repo.commit("feat: a new greeting", tag="v1.1.0")
    expected = json.loads(hotrelease("windows", "-n", "1", "--json", cwd=repo.path).stdout)

    run = repo.pipeline("v1.1.0")
    assert run.code == 0, run.output
    assert "HOTRELEASE_CLASS=feature" in run.log("hotrelease-classify")
    assert "HOTRELEASE_LANE=scheduled" in run.log("hotrelease-classify")
    canary = run.log("hotrelease-publish-canary")
    opens = expected["windows"][0]["start"]
    assert f"next window opens at {opens}" in canary, canary
    assert run.status("hotrelease-publish-canary") == "WARN", run.output  # exit 3: not now
    assert set(repo.versions().values()) == {None}


def test_tampered_bundle_stops_the_pipeline_at_verify(plugin) -> None:
    repo = plugin(nodes=2)
    repo.set_ci_variables()
    # An attacker between sign and verify (e.g. in artifact storage) flips one bundle byte.
    ci = repo.path / ".gitlab-ci.yml"
    ci.write_text(ci.read_text() + """
evil-tamper:
  stage: sign
  needs: [hotrelease-sign]
  rules:
    - if: $CI_COMMIT_TAG
  script:
    - >-
      python3 -c 'import glob; p = glob.glob("dist/*.tar.gz")[0];
      b = bytearray(open(p, "rb").read()); b[len(b) // 2] ^= 1; open(p, "wb").write(b)'

hotrelease-verify:
  needs: [hotrelease-build, hotrelease-sign, evil-tamper]
""")
    repo.commit("greeter plugin", tag="v1.0.0")
    run = repo.pipeline("v1.0.0")
    assert run.code != 0
    assert run.status("evil-tamper") == "PASS", run.output
    assert run.status("hotrelease-verify") == "FAIL", run.output
    assert "greeter-1.0.0.tar.gz: sha256 is" in run.log("hotrelease-verify")
    for job in ("hotrelease-classify", "hotrelease-route", CHILD,
                "hotrelease-publish-canary"):
        assert not run.started(job), f"{job} ran after a failed verify"
    assert set(repo.versions().values()) == {None}


def test_deploy_freeze_holds_the_release_then_the_scheduled_pipeline_publishes_it(
        plugin) -> None:
    repo = plugin(nodes=2)
    repo.set_ci_variables()
    repo.commit("greeter plugin", tag="v1.0.0")

    frozen = repo.pipeline("v1.0.0", variables={"CI_DEPLOY_FREEZE": "true"})
    assert frozen.code == 0, frozen.output
    assert frozen.status("hotrelease-hold") == "WARN", frozen.output
    assert "deploy freeze" in frozen.log("hotrelease-hold")
    assert not frozen.started("hotrelease-publish-canary")
    assert set(repo.versions().values()) == {None}

    # The pipeline schedule (inside the window, freeze over) publishes what is pending.
    scheduled = repo.pipeline(None, variables={"CI_PIPELINE_SOURCE": "schedule"})
    assert scheduled.code == 0, scheduled.output
    assert "pending release - v1.0.0" in scheduled.log("hotrelease-pending")
    assert scheduled.status("hotrelease-publish-canary") == "PASS", scheduled.output
    assert sorted(v or "-" for v in repo.versions().values()) == ["-", "1.0.0"]


def test_branch_pipelines_do_not_release(plugin) -> None:
    repo = plugin(nodes=1, start=False)
    repo.commit("greeter plugin")
    listing = run_gcl(repo.path, "--list", home=repo.home)
    assert listing.code == 0, listing.output
    assert "hotrelease-build" not in listing.output


def test_vendored_pipeline_is_the_shipped_one(plugin) -> None:
    repo = plugin(nodes=1, start=False)
    vendored = repo.path / ".gitlab" / "hotrelease.gitlab-ci.yml"
    assert vendored.read_text() == PIPELINE_FILE.read_text()
    assert "HOTRELEASE_SIGNING_KEY:" not in (repo.path / ".gitlab-ci.yml").read_text()
    secretish = subprocess.run(["git", "grep", "-l", repo.agent_token], cwd=repo.path,
                               capture_output=True, text=True)
    assert secretish.stdout == ""


@requires_go
def test_go_init_pipeline_builds_signs_verifies_and_classifies(tmp_path: Path) -> None:
    """`init --go`: its .gitlab-ci.yml passes the schema and the release chain runs (the
    rollout of Go plugins is the same child pipeline as for Python)."""
    repo = tmp_path / "arena"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    hotrelease("init", "--go", cwd=repo)
    plugin = PluginRepo(repo, tmp_path / "gcl-home", name="arena")
    plugin.set_ci_variables()
    plugin.commit("arena plugin", tag="v0.1.0")
    run = plugin.pipeline("v0.1.0", "--needs", "hotrelease-classify")
    assert run.code == 0, run.output
    for job in ("hotrelease-build", "hotrelease-sign", "hotrelease-verify",
                "hotrelease-classify"):
        assert run.status(job) == "PASS", f"{job}\n{run.output}"
    assert "-buildmode=plugin" in run.log("hotrelease-build")
    assert (repo / "dist" / "arena-0.1.0.manifest.json.sig").is_file()
    assert "HOTRELEASE_CLASS=major" in run.log("hotrelease-classify")
