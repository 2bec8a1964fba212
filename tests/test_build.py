"""`hotrelease build`: reproducible bundles, manifest contents, SHA256SUMS, clean failures."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import tarfile

import pytest

from hotrelease.errors import EXIT_OK, EXIT_USAGE

EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}


def build(cli, repo, *args, env=None):
    return cli("build", *args, cwd=repo.path, env={**EPOCH, **(env or {})})


def dist_listing(repo):
    dist = repo.path / "dist"
    return sorted(p.name for p in dist.iterdir()) if dist.exists() else []


def test_build_writes_bundle_manifest_and_sums(cli, plugin_repo):
    result = build(cli, plugin_repo, "--version", "1.2.3", "--json")
    assert result.code == EXIT_OK, result.stderr
    doc = json.loads(result.stdout)
    assert dist_listing(plugin_repo) == ["SHA256SUMS", "greeter-1.2.3.manifest.json",
                                         "greeter-1.2.3.tar.gz"]
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=plugin_repo.path / "dist",
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    manifest = json.loads((plugin_repo.path / "dist/greeter-1.2.3.manifest.json").read_text())
    assert manifest["name"] == "greeter" and manifest["version"] == "1.2.3"
    assert manifest["bundle"]["sha256"] == doc["sha256"]
    assert {f["path"] for f in manifest["files"]} == {"plugin.py", "greetings.txt"}
    assert manifest["provenance"]["git_commit"] == plugin_repo.git("rev-parse", "HEAD")
    assert manifest["provenance"]["git_ref"] == "refs/heads/main"
    assert manifest["provenance"]["dirty"] is False
    assert manifest["entry_symbols"] == ["handle", "health", "VERSION"]
    assert manifest["expires"] > manifest["provenance"]["built_at"]
    with tarfile.open(plugin_repo.path / "dist/greeter-1.2.3.tar.gz") as tar:
        plugin = tar.extractfile("plugin.py").read().decode()
    assert 'VERSION = "1.2.3"' in plugin


def test_bundle_is_normalised(cli, plugin_repo):
    assert build(cli, plugin_repo, "--version", "1.0.0").code == EXIT_OK
    bundle = plugin_repo.path / "dist/greeter-1.0.0.tar.gz"
    header = bundle.read_bytes()[:10]
    assert header[3] & 0x08 == 0, "gzip header must not carry a file name"
    assert header[4:8] == b"\0\0\0\0", "gzip header must not carry a timestamp"
    with tarfile.open(bundle) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    for member in members:
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
        assert member.mtime == 1700000000
        assert member.mode in (0o644, 0o755)


def test_same_commit_builds_byte_identical(cli, plugin_repo):
    assert build(cli, plugin_repo, "--version", "1.0.0").code == EXIT_OK
    first = (plugin_repo.path / "dist/greeter-1.0.0.tar.gz").read_bytes()
    assert build(cli, plugin_repo, "--version", "1.0.0").code == EXIT_OK
    assert (plugin_repo.path / "dist/greeter-1.0.0.tar.gz").read_bytes() == first


def test_build_in_another_directory_is_byte_identical(cli, plugin_repo, tmp_path):
    clone = tmp_path / "elsewhere" / "deeper" / "clone"
    subprocess.run(["git", "clone", "-q", str(plugin_repo.path), str(clone)], check=True)
    assert build(cli, plugin_repo, "--version", "1.0.0").code == EXIT_OK
    result = cli("build", "--version", "1.0.0", cwd=clone, env=EPOCH)
    assert result.code == EXIT_OK, result.stderr
    assert (clone / "dist/greeter-1.0.0.tar.gz").read_bytes() == \
        (plugin_repo.path / "dist/greeter-1.0.0.tar.gz").read_bytes()


def test_different_source_date_epoch_changes_bytes(cli, plugin_repo):
    """The twin of the reproducibility test: the epoch really is what goes into the bundle."""
    assert build(cli, plugin_repo, "--version", "1.0.0").code == EXIT_OK
    first = (plugin_repo.path / "dist/greeter-1.0.0.tar.gz").read_bytes()
    assert build(cli, plugin_repo, "--version", "1.0.0",
                 env={"SOURCE_DATE_EPOCH": "1700000001"}).code == EXIT_OK
    assert (plugin_repo.path / "dist/greeter-1.0.0.tar.gz").read_bytes() != first


def test_without_epoch_the_commit_time_is_used(cli, plugin_repo):
    result = cli("build", "--version", "1.0.0", cwd=plugin_repo.path,
                 env={"SOURCE_DATE_EPOCH": ""})
    assert result.code == EXIT_OK, result.stderr
    with tarfile.open(plugin_repo.path / "dist/greeter-1.0.0.tar.gz") as tar:
        assert tar.getmembers()[0].mtime == 1767225600  # 2026-01-01T00:00:00Z, the commit


@pytest.mark.parametrize("tag, message", [("v2.3.4", None), ("v2.3.4", "release 2.3.4"),
                                          ("2.3.4", None)])
def test_version_comes_from_the_semver_tag_at_head(cli, plugin_repo, tag, message):
    plugin_repo.tag("not-a-version")
    plugin_repo.tag(tag, message)
    result = build(cli, plugin_repo, "--json")
    assert result.code == EXIT_OK, result.stderr
    assert json.loads(result.stdout)["version"] == "2.3.4"


def test_no_tag_and_no_version_is_a_usage_error(cli, plugin_repo):
    plugin_repo.tag("v1.0.0")
    plugin_repo.commit("later")
    result = build(cli, plugin_repo)
    assert result.code == EXIT_USAGE and "SemVer tag" in result.error_line
    assert dist_listing(plugin_repo) == []


@pytest.mark.parametrize("version", ["1.2", "v1.2.3", "01.2.3", "1.2.3-01", "latest", ""])
def test_malformed_version_is_refused(cli, plugin_repo, version):
    result = build(cli, plugin_repo, "--version", version)
    assert result.code == EXIT_USAGE and "SemVer" in result.error_line
    assert dist_listing(plugin_repo) == []


def test_dirty_tree_is_refused_unless_allowed(cli, plugin_repo):
    (plugin_repo.path / "src/greetings.txt").write_text("Howdy\n")
    result = build(cli, plugin_repo, "--version", "1.0.0")
    assert result.code == EXIT_USAGE and "dirty" in result.error_line
    assert "src/greetings.txt" in result.error_line
    assert dist_listing(plugin_repo) == []
    allowed = build(cli, plugin_repo, "--version", "1.0.0", "--allow-dirty", "--json")
    assert allowed.code == EXIT_OK
    manifest = json.loads((plugin_repo.path / "dist/greeter-1.0.0.manifest.json").read_text())
    assert manifest["provenance"]["dirty"] is True


def test_untracked_file_makes_the_tree_dirty(cli, plugin_repo):
    (plugin_repo.path / "notes.txt").write_text("wip")
    assert build(cli, plugin_repo, "--version", "1.0.0").code == EXIT_USAGE


def _set_commands(repo, commands):
    config = repo.path / "hotrelease.toml"
    text = config.read_text().replace(
        'commands = ["python3 build.py --version {version} --out {out}"]',
        "commands = " + json.dumps(commands))
    config.write_text(text)
    repo.commit("change build commands")


def test_failing_build_command_leaves_nothing_behind(cli, plugin_repo):
    _set_commands(plugin_repo, ["python3 build.py --version {version} --out {out}",
                                "python3 -c 'import sys; sys.exit(3)'"])
    result = build(cli, plugin_repo, "--version", "1.0.0")
    assert result.code == EXIT_USAGE
    assert "build command 2 failed with exit code 3" in result.error_line
    assert dist_listing(plugin_repo) == []


def test_missing_build_output_is_refused(cli, plugin_repo):
    _set_commands(plugin_repo, ["python3 -c pass"])
    result = build(cli, plugin_repo, "--version", "1.0.0")
    assert result.code == EXIT_USAGE and "produced no files" in result.error_line
    assert dist_listing(plugin_repo) == []


def test_missing_program_is_refused(cli, plugin_repo):
    _set_commands(plugin_repo, ["no-such-compiler-xyz {out}"])
    result = build(cli, plugin_repo, "--version", "1.0.0")
    assert result.code == EXIT_USAGE and "not found" in result.error_line


def test_unknown_placeholder_names_the_key(cli, plugin_repo):
    _set_commands(plugin_repo, ["python3 build.py --out {outdir}"])
    result = build(cli, plugin_repo, "--version", "1.0.0")
    assert result.code == EXIT_USAGE and "build -> commands[0]" in result.error_line


def test_symlink_in_build_output_is_refused(cli, plugin_repo):
    _set_commands(plugin_repo, ["python3 build.py --version {version} --out {out}",
                                "ln -s /etc/passwd {out}/passwd"])
    result = build(cli, plugin_repo, "--version", "1.0.0")
    assert result.code == EXIT_USAGE and "not a regular file" in result.error_line
    assert dist_listing(plugin_repo) == []


def test_placeholders_are_not_shell_expanded(cli, plugin_repo, tmp_path):
    """A hostile version cannot exist (SemVer check), and even the out dir is one argument."""
    _set_commands(plugin_repo, ["python3 build.py --version {version} --out {out}",
                                "python3 -c 'import sys; open(sys.argv[1] + \"/argv.txt\", "
                                "\"w\").write(repr(sys.argv[1:]))' {out} '$(touch pwned)'"])
    result = build(cli, plugin_repo, "--version", "1.0.0")
    assert result.code == EXIT_OK, result.stderr
    assert not (plugin_repo.path / "pwned").exists()


def test_ci_variables_are_recorded_as_provenance(cli, plugin_repo):
    env = {"CI_PIPELINE_ID": "4711", "CI_JOB_ID": "99", "CI_COMMIT_TAG": "v1.0.0",
           "CI_PIPELINE_URL": "https://gitlab.example/p/-/pipelines/4711"}
    assert build(cli, plugin_repo, "--version", "1.0.0", env=env).code == EXIT_OK
    prov = json.loads((plugin_repo.path / "dist/greeter-1.0.0.manifest.json").read_text())[
        "provenance"]
    assert prov["ci_pipeline_id"] == "4711" and prov["ci_job_id"] == "99"
    assert prov["git_ref"] == "refs/tags/v1.0.0"


def test_rebuild_removes_a_stale_signature(cli, plugin_repo, make_key):
    key = make_key("k")
    assert build(cli, plugin_repo, "--version", "1.0.0").code == EXIT_OK
    manifest = plugin_repo.path / "dist/greeter-1.0.0.manifest.json"
    assert cli("sign", manifest, "--key", key.private).code == EXIT_OK
    assert build(cli, plugin_repo, "--version", "1.0.0").code == EXIT_OK
    assert not (plugin_repo.path / "dist/greeter-1.0.0.manifest.json.sig").exists()


def test_sha256sums_keeps_other_versions(cli, plugin_repo):
    assert build(cli, plugin_repo, "--version", "1.0.0").code == EXIT_OK
    assert build(cli, plugin_repo, "--version", "1.1.0").code == EXIT_OK
    sums = (plugin_repo.path / "dist/SHA256SUMS").read_text()
    assert "greeter-1.0.0.tar.gz" in sums and "greeter-1.1.0.tar.gz" in sums
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"],
                          cwd=plugin_repo.path / "dist").returncode == 0


def test_build_outside_git_needs_explicit_version(cli, tmp_path):
    src = tmp_path / "plain"
    from conftest import PYTHON_PLUGIN

    shutil.copytree(PYTHON_PLUGIN, src, ignore=shutil.ignore_patterns("dist"))
    assert cli("build", cwd=src).code == EXIT_USAGE
    result = cli("build", "--version", "0.1.0", "--json", cwd=src)
    assert result.code == EXIT_OK, result.stderr
    assert json.loads(result.stdout)["version"] == "0.1.0"
    with gzip.open(src / "dist/greeter-0.1.0.tar.gz") as fh:
        assert fh.read(1)
