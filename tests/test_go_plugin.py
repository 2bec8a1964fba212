"""The example Go plugin built by `hotrelease build`: manifest facts, unique plugin path per
version, byte-for-byte reproducibility across checkout directories, and the build variants
(broken health, mismatched shared API) the host tests rely on."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest
from gohelpers import API, copy_sources, go_marks, hotrelease_build, package_hashes, plugin_path_of

pytestmark = go_marks()



def so_from_bundle(bundle: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(bundle) as tar:
        member = tar.getmember("arena.so")
        out = dest / "arena.so"
        out.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
    return out


@pytest.fixture(scope="module")
def plugin_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_sources(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def v100(plugin_src: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return hotrelease_build(plugin_src, "1.0.0", tmp_path_factory.mktemp("dist"))


def test_build_records_manifest_and_go_abi_facts(v100: dict, tmp_path: Path) -> None:
    manifest = json.loads(Path(v100["manifest"]).read_text())
    assert manifest["name"] == "arena" and manifest["version"] == "1.0.0"
    assert manifest["kind"] == "go"
    assert manifest["entry_symbols"] == ["NewGame", "Version"]
    assert [f["path"] for f in manifest["files"]] == ["arena.so"]
    abi = manifest["abi"]
    assert abi["plugin_path"] == "arena-1.0.0"
    assert abi["go_version"].startswith("go1.")
    assert abi["goos"] == "linux"
    assert abi["buildmode"] == "plugin"
    assert abi["cgo_enabled"] == "1"
    assert abi["modules"].get(API) == "v1.0.0"
    # the exact facts plugin.Open compares, read from the .so (see gohelpers.elf_symbols)
    so = so_from_bundle(Path(v100["bundle"]), tmp_path)
    assert abi["package_hashes"] == package_hashes(so)


def test_each_version_gets_its_own_plugin_path(v100: dict, plugin_src: Path,
                                               tmp_path: Path) -> None:
    v110 = hotrelease_build(plugin_src, "1.1.0", tmp_path / "dist")
    paths = {plugin_path_of(so_from_bundle(Path(b["bundle"]), tmp_path / b["version"]))
             for b in (v100, v110)}
    # the linker stores the path escaped ('.' after the last '/' becomes %2e)
    assert paths == {"arena-1%2e0%2e0", "arena-1%2e1%2e0"}


def test_bundle_is_reproducible_across_directories(v100: dict, tmp_path: Path) -> None:
    """Another checkout at a different (deeper) path, another output dir: the same bytes."""
    other_src = copy_sources(tmp_path / "a" / "much" / "deeper" / "checkout")
    other = hotrelease_build(other_src, "1.0.0", tmp_path / "elsewhere" / "dist")
    assert other["sha256"] == v100["sha256"]
    assert Path(other["bundle"]).read_bytes() == Path(v100["bundle"]).read_bytes()
    files_a = json.loads(Path(v100["manifest"]).read_text())["files"]
    files_b = json.loads(Path(other["manifest"]).read_text())["files"]
    assert files_a == files_b


def test_rebuild_in_place_is_identical(v100: dict, plugin_src: Path, tmp_path: Path) -> None:
    again = hotrelease_build(plugin_src, "1.0.0", tmp_path / "again")
    assert hashlib.sha256(Path(again["bundle"]).read_bytes()).hexdigest() == v100["sha256"]


def test_variants_change_what_they_should(v100: dict, plugin_src: Path, tmp_path: Path) -> None:
    good = package_hashes(so_from_bundle(Path(v100["bundle"]), tmp_path / "good"))
    broken_build = hotrelease_build(plugin_src, "1.2.0", tmp_path / "broken",
                                    env={"GOFLAGS": "-tags=arena_broken"})
    mismatch_build = hotrelease_build(plugin_src, "1.3.0", tmp_path / "mismatch",
                                      env={"GOFLAGS": "-modfile=testdata/abi-mismatch.mod"})
    broken = package_hashes(so_from_bundle(Path(broken_build["bundle"]), tmp_path / "b"))
    mismatch = package_hashes(so_from_bundle(Path(mismatch_build["bundle"]), tmp_path / "m"))
    # the broken build only changes the plugin's own code: the shared API is untouched
    assert broken[API] == good[API] and broken["runtime"] == good["runtime"]
    # the mismatched build has another version of the shared API package
    assert mismatch[API] != good[API]
    assert mismatch["runtime"] == good["runtime"]
