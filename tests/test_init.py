"""`hotrelease init` and `hotrelease pipeline`: files, secrets, no silent overwrite, the
templates in the wheel, and the child pipeline's shape."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hotrelease.ci.pipeline import ChildSpec, StageJob, render_child, to_yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON_FILES = {"hotrelease.toml", ".gitlab-ci.yml", ".gitlab/hotrelease.gitlab-ci.yml",
                ".gitignore", "deploy/agent.toml", "deploy/hotrelease-agent.service",
                "deploy/release.pub", "keys/release.pub", "deploy/security.pub",
                "keys/security.pub", "build.py", "src/plugin.py",
                "src/greetings.txt"}


def git_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    return path


def init(cli, repo: Path, *args: str):
    return cli("init", *args, "--json", repo, cwd=repo.parent)


def test_init_writes_a_complete_python_setup(cli, tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "greeter")
    result = init(cli, repo, "--python", "--node", "a=http://10.0.0.5:7701",
                  "--node", "b=http://10.0.0.6:7701", "--window", "tue,thu 03:00 2h Europe/Berlin")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["name"] == "greeter"
    assert set(doc["written"]) == PYTHON_FILES
    for rel in PYTHON_FILES:
        assert (repo / rel).is_file(), rel

    check = cli("config", "check", repo / "hotrelease.toml")
    assert check.code == 0, check.stderr
    text = (repo / "hotrelease.toml").read_text()
    assert 'url = "http://10.0.0.6:7701"' in text and 'days = ["tue", "thu"]' in text
    windows = cli("windows", "-n", "1", "--json", "--now", "2026-11-24T12:00:00Z",
                  "--config", repo / "hotrelease.toml")
    assert json.loads(windows.stdout)["windows"][0]["start"] == "2026-11-26T02:00:00Z"

    # Secrets: private, git-ignored, never in a tracked file; the agent trusts them.
    key = repo / ".hotrelease" / "release.key"
    token = (repo / ".hotrelease" / "agent-token").read_text().strip()
    for secret in (key, repo / ".hotrelease" / "agent-token"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(token) == 64 and token.isalnum()  # maskable in GitLab
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, check=True, capture_output=True,
                             text=True).stdout.split()
    assert not any(t.startswith(".hotrelease/") for t in tracked)
    grep = subprocess.run(["git", "grep", "-l", "--cached", token], cwd=repo,
                          capture_output=True, text=True)
    assert grep.stdout == ""

    from hotrelease.agent.auth import authenticate
    from hotrelease.agent.config import load_agent_config
    from hotrelease.trust.keys import load_private_key

    agent = load_agent_config(repo / "deploy" / "agent.toml")
    assert authenticate(f"Bearer {token}", agent.tokens) == "gitlab-ci"
    assert list(agent.trusted) == [doc["keyid"]]
    assert agent.plugins.keys() == {"greeter"}
    private = load_private_key(key)
    from hotrelease.trust.keys import PublicKey

    assert PublicKey.from_key(private.public_key()).keyid == doc["keyid"]


def test_init_never_overwrites_without_force_and_always_keeps_keys(cli, tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "arena")
    first = json.loads(init(cli, repo).stdout)
    (repo / "hotrelease.toml").write_text("# mine\n")
    token = (repo / ".hotrelease" / "agent-token").read_text()

    again = init(cli, repo)
    assert again.code == 2
    assert "would overwrite" in again.error_line and "hotrelease.toml" in again.error_line
    assert (repo / "hotrelease.toml").read_text() == "# mine\n"

    forced = init(cli, repo, "--force")
    assert forced.code == 0, forced.stderr
    doc = json.loads(forced.stdout)
    assert doc["keyid"] == first["keyid"]  # a new key would orphan every signed release
    assert "keys/release.pub" in doc["kept"] and ".hotrelease/agent-token" in doc["kept"]
    assert (repo / ".hotrelease" / "agent-token").read_text() == token
    assert "[plugin]" in (repo / "hotrelease.toml").read_text()


def test_init_wires_the_security_team_key_into_project_and_agents(cli, tmp_path: Path) -> None:
    """Agents raise their security floor only on labels signed by a key they trust: init
    trusts the security team's key everywhere from the start, and never replaces it."""
    from hotrelease.agent.config import load_agent_config
    from hotrelease.config.project import load_config
    from hotrelease.trust.keys import load_public_key

    repo = git_repo(tmp_path / "arena")
    doc = json.loads(init(cli, repo).stdout)
    private = repo / ".hotrelease" / "security.key"
    assert doc["security_signing_key"] == str(private)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    team = load_public_key(repo / "keys" / "security.pub")
    assert team.keyid == doc["security_keyid"] != doc["keyid"]
    assert (repo / "deploy" / "security.pub").read_bytes() == \
        (repo / "keys" / "security.pub").read_bytes()
    assert list(load_agent_config(repo / "deploy" / "agent.toml").security_keys) == [team.keyid]
    cfg = load_config(repo / "hotrelease.toml")
    assert [load_public_key(p).keyid for p in cfg.trust.security_keys] == [team.keyid]

    again = json.loads(init(cli, repo, "--force").stdout)
    assert again["security_keyid"] == team.keyid and "keys/security.pub" in again["kept"]

    # The team's own public key: trusted as given, no private key is made here.
    other = git_repo(tmp_path / "other")
    assert cli("keygen", "--out", tmp_path / "team").code == 0
    given = json.loads(init(cli, other, "--security-key", str(tmp_path / "team.pub")).stdout)
    assert given["security_keyid"] == load_public_key(tmp_path / "team.pub").keyid
    assert given["security_signing_key"] is None
    assert not (other / ".hotrelease" / "security.key").exists()


def test_init_refuses_a_security_key_that_is_not_a_public_key(cli, tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "p")
    bogus = tmp_path / "bogus.pub"
    bogus.write_text("not a key\n")
    result = init(cli, repo, "--security-key", str(bogus))
    assert result.code == 2, result.stdout
    assert "--security-key" in result.error_line
    assert [p.name for p in repo.iterdir()] == [".git"]


def test_init_merges_an_existing_gitignore(cli, tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "greeter")
    (repo / ".gitignore").write_text("node_modules/\ndist/")
    result = init(cli, repo)
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["updated"] == [".gitignore"]
    lines = (repo / ".gitignore").read_text().splitlines()
    assert lines[:2] == ["node_modules/", "dist/"] and lines.count("dist/") == 1
    assert ".hotrelease/" in lines  # the secrets stay out of git
    check = subprocess.run(["git", "check-ignore", ".hotrelease/release.key"], cwd=repo)
    assert check.returncode == 0


def test_init_into_a_new_directory_and_name_option(cli, tmp_path: Path) -> None:
    result = cli("init", "--name", "my_plugin", tmp_path / "New Dir", "--json", cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "my_plugin"
    assert cli("config", "check", tmp_path / "New Dir" / "hotrelease.toml").code == 0
    derived = cli("init", tmp_path / "Shiny Plugin!", "--json", cwd=tmp_path)
    assert json.loads(derived.stdout)["name"] == "shiny-plugin"


def test_init_go_scaffold(cli, tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "arena")
    result = init(cli, repo, "--go")
    assert result.code == 0, result.stderr
    written = set(json.loads(result.stdout)["written"])
    assert {"main.go", "go.mod"} <= written and "build.py" not in written
    assert "module example.com/arena" in (repo / "go.mod").read_text()
    text = (repo / "hotrelease.toml").read_text()
    assert 'kind = "go"' in text and "-buildmode=plugin" in text
    assert "HOTRELEASE_IMAGE" in (repo / ".gitlab-ci.yml").read_text()
    assert cli("config", "check", repo / "hotrelease.toml").code == 0


@pytest.mark.parametrize("args, message", [
    (("--go", "--python"), "not both"),
    (("--node", "nourl"), "NAME=URL"),
    (("--node", "a=ftp://x"), "NAME=URL"),
    (("--window", "tue 3am 2h"), "HH:MM"),
    (("--window", "someday 03:00 2h UTC"), "window"),
    (("--name", "Bad Name"), "plugin name"),
])
def test_init_refuses_bad_input_and_writes_nothing(cli, tmp_path: Path, args, message) -> None:
    repo = git_repo(tmp_path / "p")
    result = init(cli, repo, *args)
    assert result.code == 2, result.stdout
    assert message in result.error_line
    assert [p.name for p in repo.iterdir()] == [".git"]


def test_templates_are_package_data_and_the_pipeline_is_the_shipped_file() -> None:
    from hotrelease.ci.scaffold import template_root

    root = template_root()
    shipped = root / "gitlab" / "hotrelease.gitlab-ci.yml"
    assert shipped.read_bytes() == (REPO_ROOT / "pipelines" / "hotrelease.gitlab-ci.yml"
                                    ).read_bytes()
    for rel in ("hotrelease.toml.tmpl", "gitlab-ci.yml.tmpl", "deploy/agent.toml.tmpl",
                "deploy/hotrelease-agent.service", "python-plugin/build.py",
                "go-plugin/main.go", "__init__.py"):
        assert (root / rel).is_file(), rel


def test_package_build_ships_the_templates(tmp_path: Path) -> None:
    """init must work after `pip install`: setuptools' build_py (what a wheel is made from)
    carries the templates, the pipeline as a regular file (not a dangling link)."""
    out = tmp_path / "lib"
    code = ("import sys, setuptools; sys.argv = ['setup.py', '-q', 'build_py', '--build-lib', "
            f"{str(out)!r}]; setuptools.setup()")
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    templates = out / "hotrelease" / "templates"
    pipeline = templates / "gitlab" / "hotrelease.gitlab-ci.yml"
    assert not pipeline.is_symlink()
    assert pipeline.read_bytes() == (REPO_ROOT / "pipelines" / "hotrelease.gitlab-ci.yml"
                                     ).read_bytes()
    for rel in ("hotrelease.toml.tmpl", "gitlab-ci.yml.tmpl", "gitignore.tmpl",
                "python-plugin/src/plugin.py", "python-plugin/build.py",
                "go-plugin/main.go", "deploy/agent.toml.tmpl",
                "deploy/hotrelease-agent.service"):
        assert (templates / rel).is_file(), rel
    for rel in ("commands/init.py", "ci/scaffold.py", "ci/pipeline.py"):
        assert (out / "hotrelease" / rel).is_file(), rel


# --- hotrelease pipeline: the child YAML ----------------------------------------------------

STAGES = [StageJob("canary", False, ("n1",)), StageJob("wave-1", True, ("n2", "n3")),
          StageJob("all", True, ("n4",))]


def child(**kwargs) -> dict:
    spec = ChildSpec(**{"lane": "scheduled", "manifest": "dist/g-1.1.0.manifest.json",
                        "release": "g 1.1.0", "plan_digest": "sha256:" + "a" * 64,
                        "release_class": "feature", "stages": STAGES, **kwargs})
    return yaml.safe_load(render_child(spec))


def test_scheduled_child_gates_stages_behind_manual_approvals() -> None:
    doc = child()
    assert doc["stages"] == ["canary", "wave-1", "all", "rollback"]
    canary = doc["hotrelease-publish-canary"]
    assert canary.get("when") is None
    assert canary["allow_failure"] == {"exit_codes": [3]}  # outside the window: a warning
    assert {"pipeline": "$PARENT_PIPELINE_ID", "job": "hotrelease-route"} in canary["needs"]
    script = "\n".join(canary["script"])
    assert "hotrelease publish 'dist/g-1.1.0.manifest.json' --stage 'canary' --plan " \
           "'sha256:" in script
    assert "CI_DEPLOY_FREEZE" in script
    for stage, after in (("wave-1", "hotrelease-publish-canary"),
                         ("all", "hotrelease-approve-wave-1")):
        job = doc[f"hotrelease-approve-{stage}"]
        assert job["when"] == "manual" and job["allow_failure"] is False  # blocking
        assert job["environment"]["name"] == "production"
        assert {"job": after, "artifacts": False} in job["needs"]
        text = "\n".join(job["script"])
        assert text.index("hotrelease approve") < text.index("hotrelease publish")
        assert "--key-env HOTRELEASE_APPROVER_KEY" in text
    assert doc["hotrelease-rollback"]["when"] == "manual"
    assert "hotrelease-notify" not in doc
    for name in ("hotrelease-publish-canary", "hotrelease-approve-all", "hotrelease-rollback"):
        assert doc[name]["resource_group"] == "hotrelease-$CI_PROJECT_PATH_SLUG-production"


def test_stages_the_fleet_completed_are_left_out() -> None:
    doc = child(done=["canary"])
    assert "hotrelease-publish-canary" not in doc
    assert [n for n in doc["hotrelease-approve-wave-1"]["needs"] if "job" in n and
            "pipeline" not in n] == []
    finished = child(done=["canary", "wave-1", "all"])
    assert [k for k in finished if k.startswith("hotrelease-")] == ["hotrelease-hold"]
    assert "nothing pending" in finished["hotrelease-hold"]["script"][0]
    assert finished["hotrelease-hold"]["script"][-1] == "exit 0"


def test_urgent_child_notifies_then_canary_then_all_with_no_window_guard() -> None:
    doc = child(lane="urgent", release_class="security",
                stages=[StageJob("canary", False), StageJob("all", False)])
    assert doc["stages"] == ["notify", "canary", "all", "rollback"]
    assert "--notify" in "\n".join(doc["hotrelease-notify"]["script"])
    for name in ("hotrelease-publish-canary", "hotrelease-publish-all"):
        assert "allow_failure" not in doc[name]  # urgent: failing is failing
        assert "CI_DEPLOY_FREEZE" not in "\n".join(doc[name]["script"])
    assert {"job": "hotrelease-publish-canary", "artifacts": False} in \
        doc["hotrelease-publish-all"]["needs"]


def test_deploy_freeze_holds_scheduled_and_unsigned_urgent_but_not_break_glass() -> None:
    held = child(deploy_freeze=True)
    assert [k for k in held if k.startswith("hotrelease-")] == ["hotrelease-hold"]
    assert held["hotrelease-hold"]["allow_failure"] == {"exit_codes": [3]}
    urgent_unsigned = child(lane="urgent", deploy_freeze=True, break_glass=False)
    assert "hotrelease-hold" in urgent_unsigned
    glass = child(lane="urgent", deploy_freeze=True, break_glass=True)
    assert "hotrelease-publish-canary" in glass
    assert "break-glass" in "\n".join(glass["hotrelease-notify"]["script"])
    nothing = child(lane="none")
    assert nothing["hotrelease-hold"]["script"][-1] == "exit 0"


def test_yaml_writer_round_trips_awkward_strings() -> None:
    data = {"a": ["it's", 'say "hi"', "$VAR ${X:+y}", "multi\nline", "- dash", "#hash",
                  "yes", "null", "1.0", "", "ünï"], "b": {"c": True, "d": 3, "e": []},
            "weird key: x": {}, "f": [{"g": 1, "h": [1, 2]}, "s"]}
    assert yaml.safe_load(to_yaml(data)) == data


def test_pipeline_command_refuses_a_lane_the_decision_does_not_give(cli, build_plugin,
                                                                   plugin_repo) -> None:
    release = build_plugin("1.0.0")
    out = plugin_repo.path / "child.yml"
    wrong = cli("pipeline", "--lane", "urgent", "--manifest", release.manifest, "--out", out,
                cwd=plugin_repo.path)
    assert wrong.code == 1, wrong.stderr
    assert "lane" in wrong.error_line and not out.exists()
    bad = cli("pipeline", "--lane", "fast", "--manifest", release.manifest, "--out", out,
              cwd=plugin_repo.path)
    assert bad.code == 2


def test_pipeline_command_writes_the_stage_plan_of_the_inventory(cli, tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "greeter")
    assert init(cli, repo, "--node", "a=http://127.0.0.1:9", "--node", "b=http://127.0.0.1:9",
                "--node", "c=http://127.0.0.1:9", "--window", "mon-sun 00:00 1d UTC").code == 0
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=repo, check=True, env={**os.environ,
                                                                              **env})
    built = json.loads(cli("build", "--version", "1.0.0", "--json", cwd=repo).stdout)
    assert cli("sign", built["manifest"], "--key", repo / ".hotrelease" / "release.key").code == 0
    out = repo / ".hotrelease-ci" / "child.yml"
    result = cli("pipeline", "--lane", "scheduled", "--manifest", built["manifest"],
                 "--out", out, "--json", cwd=repo)
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [(s["name"], s["approval"], len(s["nodes"])) for s in doc["stages"]] == \
        [("canary", False, 1), ("all", True, 2)]
    child_doc = yaml.safe_load(out.read_text())
    assert set(child_doc) >= {"hotrelease-publish-canary", "hotrelease-approve-all"}
    assert doc["plan_digest"] in out.read_text()
    again = cli("pipeline", "--lane", "scheduled", "--manifest", built["manifest"],
                "--plan", "sha256:" + "0" * 64, "--out", out, cwd=repo)
    assert again.code == 1 and "plan changed" in again.error_line


def _init_and_build(cli, tmp_path: Path, nodes: int, version: str = "0.1.0") -> tuple[Path, str]:
    repo = git_repo(tmp_path / f"greeter-{nodes}")
    args = [a for i in range(nodes) for a in ("--node", f"n{i}=http://127.0.0.1:9")]
    assert init(cli, repo, *args, "--window", "mon-sun 00:00 1d UTC").code == 0
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=repo, check=True,
                   env={**os.environ, **env})
    built = json.loads(cli("build", "--version", version, "--json", cwd=repo).stdout)
    assert cli("sign", built["manifest"], "--key", repo / ".hotrelease" / "release.key").code == 0
    return repo, built["manifest"]


@pytest.mark.parametrize("nodes, expected", [
    # One node: the canary is the whole fleet, so a major release needs an approval for it.
    (1, [("canary", True, 1)]),
    (2, [("canary", False, 1), ("all", True, 1)]),
])
def test_plan_and_child_pipeline_gate_a_major_release_on_a_small_fleet(
        cli, tmp_path: Path, nodes: int, expected) -> None:
    repo, manifest = _init_and_build(cli, tmp_path, nodes)
    plan = cli("plan", "--manifest", manifest, "--json", cwd=repo)
    assert plan.code == 0, plan.stderr
    doc = json.loads(plan.stdout)
    assert doc["class"] == "major"
    gated = [name for name, approval, _ in expected if approval]
    assert doc["approval_stages"] == gated
    assert [(s["stage"], s["needs_approval"], len(s["nodes"]))
            for s in doc["stage_plan"] if s["nodes"]] == expected
    text = cli("plan", "--manifest", manifest, cwd=repo).stdout
    assert f"approval:    {', '.join(gated)}" in text

    out = repo / "child.yml"
    child = cli("pipeline", "--lane", "scheduled", "--manifest", manifest, "--out", out,
                "--json", cwd=repo)
    assert child.code == 0, child.stderr
    assert [(s["name"], s["approval"], len(s["nodes"]))
            for s in json.loads(child.stdout)["stages"]] == expected
    jobs = set(yaml.safe_load(out.read_text()))
    for name, approval, _ in expected:
        assert (f"hotrelease-approve-{name}" in jobs) is approval, jobs
        assert (f"hotrelease-publish-{name}" in jobs) is not approval, jobs
    assert doc["plan_digest"] in out.read_text()
