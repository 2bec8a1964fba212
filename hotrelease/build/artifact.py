"""`hotrelease build`: run the plugin's build, then bundle, manifest and SHA256SUMS.

Everything is produced in a private staging directory inside the output dir and renamed
into place only when all of it succeeded, so a failed build leaves no partial files.

`build_release()` takes any `BuildProject` (a `config.project.ProjectConfig` is one): the
build never imports the config. Imports `build` and `trust` only; called by `commands` and
the demo.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from hotrelease import __version__
from hotrelease.build.bundle import create_bundle
from hotrelease.build.checksum import write_sha256sums
from hotrelease.build.git import SourceState, read_source_state
from hotrelease.build.goabi import go_abi_facts
from hotrelease.build.settings import BuildConfig, PluginConfig
from hotrelease.errors import BuildError, UsageError
from hotrelease.trust.digest import sha256_file
from hotrelease.trust.manifest import BundleRef, ReleaseManifest
from hotrelease.trust.times import format_time
from hotrelease.trust.versions import parse_version

# GitLab CI variables recorded as provenance when present.
CI_VARIABLES = {
    "CI_PIPELINE_ID": "ci_pipeline_id",
    "CI_PIPELINE_URL": "ci_pipeline_url",
    "CI_JOB_ID": "ci_job_id",
    "CI_JOB_URL": "ci_job_url",
    "CI_PROJECT_PATH": "ci_project_path",
    "CI_COMMIT_REF_NAME": "ci_commit_ref_name",
    "GITLAB_USER_LOGIN": "ci_user",
}


class BuildProject(Protocol):
    """What a build reads from the project: the config file's path (for messages), the
    source root, the plugin and its build settings."""

    @property
    def path(self) -> Path: ...

    @property
    def root(self) -> Path: ...

    @property
    def plugin(self) -> PluginConfig: ...

    @property
    def build(self) -> BuildConfig: ...


@dataclass
class BuildResult:
    manifest: ReleaseManifest
    bundle_path: Path
    manifest_path: Path
    sums_path: Path


def plugin_path_for(name: str, version: str) -> str:
    """A unique Go plugin path per version: plugin.Open refuses a path already loaded."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{name}-{version}")


def resolve_version(explicit: str | None, state: SourceState) -> str:
    if explicit is not None:
        return str(parse_version(explicit))
    if not state.in_git:
        raise UsageError("no --version given and the source is not in a git repository")
    if not state.head_versions:
        raise UsageError("no --version given and HEAD has no SemVer tag (like v1.4.2)")
    return str(state.head_versions[-1])


def source_date_epoch(env: Mapping[str, str], state: SourceState) -> int:
    value = env.get("SOURCE_DATE_EPOCH")
    if value:
        try:
            epoch = int(value)
        except ValueError:
            raise UsageError(f"SOURCE_DATE_EPOCH={value!r} is not an integer") from None
        if epoch < 0:
            raise UsageError("SOURCE_DATE_EPOCH must not be negative")
        return epoch
    return state.commit_time or 0


def _run_commands(cfg: BuildProject, substitutions: dict[str, str], env: dict[str, str],
                  log: Callable[[str], None]) -> None:
    for number, template in enumerate(cfg.build.commands, start=1):
        try:
            argv = [arg.format(**substitutions) for arg in shlex.split(template)]
        except (KeyError, IndexError, ValueError) as exc:
            raise BuildError(f"{cfg.path}: build -> commands[{number - 1}]: bad command or "
                             f"placeholder ({exc}); known: "
                             + ", ".join("{" + k + "}" for k in substitutions)) from None
        log(f"build[{number}/{len(cfg.build.commands)}]: {shlex.join(argv)}")
        try:
            proc = subprocess.run(argv, cwd=cfg.build.workdir, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=cfg.build.timeout)
        except FileNotFoundError:
            raise BuildError(f"build command {number} failed: {argv[0]!r} not found") from None
        except subprocess.TimeoutExpired:
            raise BuildError(f"build command {number} timed out after "
                             f"{cfg.build.timeout}s") from None
        if proc.stdout:
            sys.stderr.write(proc.stdout.decode(errors="replace"))
        if proc.returncode != 0:
            raise BuildError(f"build command {number} failed with exit code "
                             f"{proc.returncode}: {shlex.join(argv)}")


def build_release(cfg: BuildProject, *, version: str | None, out_dir: Path | None,
                  allow_dirty: bool, now: datetime, env: Mapping[str, str] | None = None,
                  log: Callable[[str], None] = lambda _: None) -> BuildResult:
    env = dict(os.environ if env is None else env)
    out_dir = Path(out_dir or cfg.build.output_dir)
    state = read_source_state(cfg.root, ignore=[out_dir])
    version = resolve_version(version, state)
    if state.dirty and not allow_dirty:
        raise UsageError(f"work tree is dirty ({state.dirty_paths[0]}"
                         + (f" and {len(state.dirty_paths) - 1} more" if
                            len(state.dirty_paths) > 1 else "")
                         + "); commit first or pass --allow-dirty")
    epoch = source_date_epoch(env, state)
    name = cfg.plugin.name
    stem = f"{name}-{version}"
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".hotrelease-build-", dir=out_dir))
    try:
        payload = staging / "payload"
        payload.mkdir()
        subs = {"name": name, "version": version, "out": str(payload),
                "plugin_path": plugin_path_for(name, version)}
        env.update({"SOURCE_DATE_EPOCH": str(epoch), "HOTRELEASE_NAME": name,
                    "HOTRELEASE_VERSION": version, "HOTRELEASE_OUT": str(payload),
                    "HOTRELEASE_PLUGIN_PATH": subs["plugin_path"], **cfg.build.env})
        _run_commands(cfg, subs, env, log)
        if not any(payload.iterdir()):
            raise BuildError(f"build produced no files in its output dir ({{out}}); "
                             f"check {cfg.path}: build -> commands")
        abi: dict[str, Any] = {}
        if cfg.plugin.kind == "go":
            objects = sorted(payload.rglob("*.so"))
            if not objects:
                raise BuildError("plugin kind is 'go' but the build produced no .so file")
            abi = go_abi_facts(objects[0], cwd=cfg.build.workdir, env=env)
            abi["plugin_path"] = subs["plugin_path"]
        elif cfg.plugin.kind == "python":
            abi = {"python": "3"}
        log(f"bundle: {stem}.tar.gz")
        staged_bundle = staging / f"{stem}.tar.gz"
        files = create_bundle(payload, staged_bundle, mtime=epoch)
        digest, size = sha256_file(staged_bundle)
        provenance: dict[str, Any] = {
            "git_commit": state.commit,
            "git_ref": env.get("CI_COMMIT_TAG") and f"refs/tags/{env['CI_COMMIT_TAG']}"
            or state.ref,
            "dirty": state.dirty,
            "builder": f"hotrelease/{__version__} python/{platform.python_version()} "
                       f"{platform.node()}",
            "built_at": format_time(now),
            "source_date_epoch": epoch,
        }
        provenance.update({key: env[var] for var, key in CI_VARIABLES.items() if env.get(var)})
        manifest = ReleaseManifest(
            name=name, version=version, kind=cfg.plugin.kind,
            bundle=BundleRef(staged_bundle.name, digest, size), files=files,
            expires=now + timedelta(days=cfg.build.expires_days), provenance=provenance,
            abi=abi, entry_symbols=cfg.plugin.entry_symbols,
            dependencies=cfg.plugin.dependencies, labels=cfg.plugin.labels)
        staged_manifest = staging / f"{stem}.manifest.json"
        manifest.save(staged_manifest)
        bundle_path = out_dir / staged_bundle.name
        manifest_path = out_dir / staged_manifest.name
        # A signature over an earlier build of this version would now be stale.
        Path(f"{manifest_path}.sig").unlink(missing_ok=True)
        os.replace(staged_bundle, bundle_path)
        os.replace(staged_manifest, manifest_path)
        sums = write_sha256sums(out_dir, {bundle_path.name: digest,
                                          manifest_path.name: sha256_file(manifest_path)[0]})
        return BuildResult(manifest, bundle_path, manifest_path, sums)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
