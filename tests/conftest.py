"""Shared fixtures: real git repositories in temp dirs, real Ed25519 keys, real builds of
the example plugin, and the CLI run as a real subprocess (exit codes, stdout, stderr)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples"
PYTHON_PLUGIN = EXAMPLES / "python-plugin"
FIXED_NOW = "2026-11-24T12:00:00Z"


# --- the CLI as a user runs it ---------------------------------------------------------------


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def error_line(self) -> str:
        lines = [ln for ln in self.stderr.splitlines() if ln.startswith("hotrelease: error:")]
        return lines[-1] if lines else ""


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
    from hotrelease.signing import generate_keypair

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
    from datetime import UTC, datetime

    from hotrelease.artifact import build_release
    from hotrelease.config import load_config
    from hotrelease.manifest import parse_manifest_bytes
    from hotrelease.signing import MANIFEST_TYPE, Envelope, load_private_key

    default_key = make_key("release")

    def build(version: str = "1.0.0", *, key: KeyPair | None = None, out: Path | None = None,
              env: dict[str, str] | None = None, sign: bool = True) -> SignedRelease:
        key = key or default_key
        cfg = load_config(plugin_repo.path / "hotrelease.toml")
        result = build_release(cfg, version=version, out_dir=out, allow_dirty=False,
                               now=datetime(2026, 11, 24, 12, tzinfo=UTC),
                               env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000",
                                    **(env or {})})
        sig = Path(f"{result.manifest_path}.sig")
        if sign:
            _, canonical = parse_manifest_bytes(result.manifest_path.read_bytes())
            envelope = Envelope(MANIFEST_TYPE)
            envelope.add_signature(canonical, load_private_key(key.private))
            envelope.save(sig)
        return SignedRelease(result.manifest_path, result.bundle_path, sig, key, version)

    return build


def go_available() -> bool:
    return shutil.which("go") is not None


requires_go = pytest.mark.skipif(not go_available(), reason="Go toolchain not installed")
