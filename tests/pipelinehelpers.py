"""Run the GitLab pipelines for real: gitlab-ci-local (shell executor) in a temp plugin
repository made by `hotrelease init`, against real agent processes on loopback.

What gitlab-ci-local 4.60 does and does not do (read from its source, see docs/gitlab.md):
- `trigger: include: - artifact: F job: J` runs the child pipeline from J's artifact;
  `strategy: depend` is not mirrored (a failed child job leaves the trigger job "passed" and
  the exit code 0), so tests read the child jobs' results and the agents' state instead;
- `needs: - pipeline: $PARENT_PIPELINE_ID` is ignored (warning); in shell mode without
  --shell-isolation every job runs in the repository directory, so the child sees dist/;
- `--variable` values do not reach a child pipeline (only the YAML's variables do); project
  CI/CD variables are emulated with a variables file under `--home`, which every pipeline
  level reads - like project variables in GitLab;
- `when: manual` jobs run only when named with `--manual` (or run by name);
- `resource_group`, `environment` protection and `rules: if: $CI_DEPLOY_FREEZE` are GitLab
  server features: parsed and schema-checked, not enforced.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from conftest import AgentProcess, free_port

GCL = shutil.which("gitlab-ci-local")
REPO_ROOT = Path(__file__).resolve().parent.parent
PIPELINE_FILE = REPO_ROOT / "pipelines" / "hotrelease.gitlab-ci.yml"
GIT_ENV = {"GIT_AUTHOR_NAME": "Release Manager", "GIT_AUTHOR_EMAIL": "rm@example.com",
           "GIT_COMMITTER_NAME": "Release Manager", "GIT_COMMITTER_EMAIL": "rm@example.com"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


_SHIM: list[Path] = []


def _shim_dir() -> Path:
    """A `hotrelease` on PATH that runs this interpreter's package (so jobs never try to
    pip-install it, whatever the machine's PATH holds)."""
    if not _SHIM:
        import atexit
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="hotrelease-shim-"))
        atexit.register(shutil.rmtree, path, True)
        script = path / "hotrelease"
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m hotrelease "$@"\n')
        script.chmod(0o755)
        _SHIM.append(path)
    return _SHIM[0]


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a job sees: this interpreter's `hotrelease` first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HOTRELEASE_", "CI_", "GITLAB_"))}
    env["PATH"] = f"{_shim_dir()}{os.pathsep}{env.get('PATH', '')}"
    env.update(GIT_ENV)
    env.update(extra or {})
    return env


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, env=tool_env(), check=True,
                          capture_output=True, text=True).stdout.strip()


def hotrelease(*args: str | Path, cwd: Path, env: dict[str, str] | None = None,
               check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "hotrelease", *map(str, args)], cwd=cwd,
                          env=tool_env(env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"hotrelease {args} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@dataclass
class GclResult:
    code: int
    output: str
    state: Path

    def log(self, job: str) -> str:
        path = self.state / "output" / f"{job}.log"
        return _ANSI.sub("", path.read_text()) if path.exists() else ""

    def status(self, job: str) -> str | None:
        """PASS / FAIL / WARN from the report lines (child jobs included), else None."""
        for line in self.output.splitlines():
            m = re.match(r"^\s*(PASS|FAIL|WARN)\s+(?:\[[^\]]+\] -> )?(\S+)", line)
            if m and m.group(2) == job:
                return m.group(1)
        return None

    def started(self, job: str) -> bool:
        return re.search(rf"(^|\s){re.escape(job)}\s+starting shell", self.output,
                         re.M) is not None


def run_gcl(repo: Path, *args: str, home: Path, variables: dict[str, str] | None = None,
            timeout: float = 240) -> GclResult:
    assert GCL is not None, "gitlab-ci-local is not installed (see .ci/run)"
    cmd = [GCL, "--force-shell-executor", "--no-color", "--home", str(home),
           "--max-job-name-padding", "0"]
    for key, value in (variables or {}).items():
        cmd += ["--variable", f"{key}={value}"]
    proc = subprocess.run([*cmd, *args], cwd=repo, env=tool_env(), capture_output=True,
                          text=True, timeout=timeout)
    output = _ANSI.sub("", proc.stdout + proc.stderr)
    return GclResult(proc.returncode, output, repo / ".gitlab-ci-local")


def write_project_variables(home: Path, values: dict[str, str]) -> None:
    """GitLab project CI/CD variables, as gitlab-ci-local reads them (every pipeline level)."""
    target = home / ".gitlab-ci-local" / "variables.yml"
    target.parent.mkdir(parents=True, exist_ok=True)
    lines = ["global:"] + [f"  {k}: {json.dumps(v)}" for k, v in values.items()]
    target.write_text("\n".join(lines) + "\n")


@dataclass
class PluginRepo:
    """A plugin repository made by `hotrelease init`, its fleet of agents and CI variables."""

    path: Path
    home: Path
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    name: str = "greeter"

    @property
    def signing_key_b64(self) -> str:
        import base64

        return base64.b64encode((self.path / ".hotrelease" / "release.key").read_bytes()
                                ).decode()

    @property
    def agent_token(self) -> str:
        return (self.path / ".hotrelease" / "agent-token").read_text().strip()

    def set_ci_variables(self, **extra: str) -> None:
        """The two CI variables a team sets by hand (masked + protected in GitLab)."""
        write_project_variables(self.home, {"HOTRELEASE_SIGNING_KEY": self.signing_key_b64,
                                            "HOTRELEASE_AGENT_TOKEN": self.agent_token,
                                            **extra})

    def commit(self, message: str, tag: str | None = None, annotated: str | None = None) -> None:
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "--allow-empty", "-m", message)
        if tag and annotated:
            git(self.path, "tag", "-a", tag, "-m", annotated)
        elif tag:
            git(self.path, "tag", tag)

    def edit(self, rel: str, old: str, new: str) -> None:
        path = self.path / rel
        text = path.read_text()
        assert old in text, f"{old!r} not in {rel}"
        path.write_text(text.replace(old, new, 1))

    def pipeline(self, tag: str | None = None, *args: str,
                 variables: dict[str, str] | None = None) -> GclResult:
        extra = dict(variables or {})
        if tag is not None:
            extra["CI_COMMIT_TAG"] = tag
        return run_gcl(self.path, *args, home=self.home, variables=extra)

    def versions(self) -> dict[str, str | None]:
        import requests

        out: dict[str, str | None] = {}
        for node, agent in self.agents.items():
            r = requests.get(f"{agent.url}/v1/plugins/{self.name}", timeout=10,
                             headers={"Authorization": f"Bearer {self.agent_token}"})
            out[node] = r.json().get("current") if r.status_code == 200 else None
        return out

    def history(self, node: str) -> list[dict]:
        import requests

        r = requests.get(f"{self.agents[node].url}/v1/plugins/{self.name}/history",
                         timeout=10, headers={"Authorization": f"Bearer {self.agent_token}"})
        r.raise_for_status()
        body = r.json()
        return body if isinstance(body, list) else body.get("records", body.get("history", []))

    def start(self) -> None:
        for agent in self.agents.values():
            agent.start(wait=False)
        for agent in self.agents.values():
            agent.wait_ready()

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()


def make_plugin_repo(tmp_path: Path, *, nodes: int = 3, window: str = "mon-sun 00:00 1d UTC",
                     bake: int = 0, name: str = "greeter", start: bool = True) -> PluginRepo:
    """`git init` + `hotrelease init` (flags only, no hand edits) + one agent per node, each
    started from the generated deploy/agent.toml (only data dir, port and key path adapted,
    as ops would when installing it on a node)."""
    path = tmp_path / name
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    ports = {f"node-{i + 1}": free_port() for i in range(nodes)}
    args = ["init", "--python", "--window", window, "--bake-seconds", str(bake)]
    for node, port in ports.items():
        args += ["--node", f"{node}=http://127.0.0.1:{port}"]
    hotrelease(*args, cwd=path)
    repo = PluginRepo(path, tmp_path / "gcl-home", name=name)
    template = (path / "deploy" / "agent.toml").read_text()
    for node, port in ports.items():
        root = tmp_path / "agents" / node
        root.mkdir(parents=True)
        text = (template.replace('"/var/lib/hotrelease-agent"', json.dumps(str(root / "data")))
                .replace('listen = "0.0.0.0"', 'listen = "127.0.0.1"')
                .replace("port = 7701", f"port = {port}")
                .replace('["release.pub"]', json.dumps([str(path / "deploy" / "release.pub")]))
                .replace('["security.pub"]', json.dumps([str(path / "deploy" /
                                                          "security.pub")])))
        agent = AgentProcess(root, text, port)
        repo.agents[node] = agent
    if start:
        try:
            repo.start()
        except BaseException:
            repo.stop()
            raise
    return repo
