"""hotrelease.trust.archive: hand-crafted hostile tarballs are refused, benign twins extract."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from hotrelease.errors import UnsafeArchiveError
from hotrelease.trust.archive import check_member_name, is_within, safe_extract


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]],
             fmt: int = tarfile.PAX_FORMAT) -> Path:
    with tarfile.open(path, "w:gz", format=fmt) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def reg(name: str, data: bytes = b"hello\n", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def special(name: str, kind: bytes, linkname: str = "", mode: int = 0o644) -> \
        tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = mode
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, None


def dirm(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "work" / "files"
    d.mkdir(parents=True)
    return d


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_benign_bundle_extracts_with_digests(tmp_path: Path, dest: Path) -> None:
    bundle = make_tar(tmp_path / "ok.tar.gz", [dirm("lib/"), reg("lib/a.py", b"A"),
                                               reg("run.sh", b"#!/bin/sh\n", 0o755),
                                               reg("deep/er/x.txt", b"x")])
    entries = safe_extract(bundle, dest)
    assert {e.path: e.sha256 for e in entries} == {
        "lib/a.py": hashlib.sha256(b"A").hexdigest(),
        "run.sh": hashlib.sha256(b"#!/bin/sh\n").hexdigest(),
        "deep/er/x.txt": hashlib.sha256(b"x").hexdigest()}
    assert (dest / "lib" / "a.py").read_bytes() == b"A"
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o555
    assert stat.S_IMODE((dest / "lib" / "a.py").stat().st_mode) == 0o444


def test_real_bundle_extracts(tmp_path: Path, dest: Path, build_plugin) -> None:
    release = build_plugin("1.0.0")
    entries = safe_extract(release.bundle, dest)
    assert sorted(e.path for e in entries) == ["greetings.txt", "plugin.py"]


HOSTILE: dict[str, list[tuple[tarfile.TarInfo, bytes | None]]] = {
    "absolute path": [reg("/tmp/evil")],
    "dotdot": [reg("../evil")],
    "dotdot inside": [reg("a/../../evil")],
    "sibling prefix escape": [reg("../files-evil/x")],
    "dot part": [reg("./a")],
    "empty part": [reg("a//b")],
    "backslash": [reg("a\\..\\b")],
    "symlink out": [special("link", tarfile.SYMTYPE, "/etc")],
    "symlink then write through it": [special("link", tarfile.SYMTYPE, ".."),
                                      reg("link/evil")],
    "relative symlink inside": [reg("a"), special("b", tarfile.SYMTYPE, "a")],
    "hardlink out": [special("hl", tarfile.LNKTYPE, "/etc/passwd")],
    "hardlink inside": [reg("a"), special("b", tarfile.LNKTYPE, "a")],
    "char device": [special("dev", tarfile.CHRTYPE)],
    "block device": [special("blk", tarfile.BLKTYPE)],
    "fifo": [special("fifo", tarfile.FIFOTYPE)],
    "setuid": [reg("suid", b"x", 0o4755)],
    "setgid": [reg("sgid", b"x", 0o2755)],
    "sticky dir": [(lambda i: (setattr(i[0], "mode", 0o1777), i)[1])(  # type: ignore[func-returns-value]
        dirm("d/"))],
    "duplicate file": [reg("a", b"1"), reg("a", b"2")],
    "file then dir": [reg("a"), reg("a/b")],
    "dir then file": [dirm("a/"), reg("a")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_member_is_refused_and_nothing_escapes(case: str, tmp_path: Path,
                                                       dest: Path) -> None:
    bundle = make_tar(tmp_path / "evil.tar.gz", HOSTILE[case])
    outside_before = tree(tmp_path)
    with pytest.raises(UnsafeArchiveError):
        safe_extract(bundle, dest)
    # nothing was created outside the destination
    after = [p for p in tree(tmp_path) if not p.startswith("work/files/")]
    assert after == [p for p in outside_before if not p.startswith("work/files/")]
    assert not (tmp_path / "evil").exists() and not (tmp_path / "work" / "evil").exists()


def test_pax_path_override_with_dotdot_is_refused(tmp_path: Path, dest: Path) -> None:
    info, data = reg("innocent.txt")
    info.pax_headers = {"path": "../../escaped.txt"}
    bundle = make_tar(tmp_path / "pax.tar.gz", [(info, data)])
    with pytest.raises(UnsafeArchiveError):
        safe_extract(bundle, dest)
    assert not (tmp_path / "escaped.txt").exists()


def test_gnu_longname_with_dotdot_is_refused(tmp_path: Path, dest: Path) -> None:
    name = "../" + "x" * 150
    bundle = make_tar(tmp_path / "gnu.tar.gz", [reg(name)], fmt=tarfile.GNU_FORMAT)
    with pytest.raises(UnsafeArchiveError):
        safe_extract(bundle, dest)


def test_existing_symlink_in_destination_parent_is_not_followed(tmp_path: Path,
                                                                dest: Path) -> None:
    # Even if something planted a symlink inside the destination, members cannot use it.
    outside = tmp_path / "outside"
    outside.mkdir()
    bundle = make_tar(tmp_path / "b.tar.gz", [reg("planted/x")])
    os.symlink(outside, dest / "planted")
    with pytest.raises(UnsafeArchiveError):
        safe_extract(bundle, dest)  # destination must be empty
    assert list(outside.iterdir()) == []


def test_total_size_limit(tmp_path: Path, dest: Path) -> None:
    bundle = make_tar(tmp_path / "big.tar.gz", [reg("a", b"0" * 1000), reg("b", b"0" * 1000)])
    with pytest.raises(UnsafeArchiveError, match="expands"):
        safe_extract(bundle, dest, max_total_bytes=1500)
    twin = tmp_path / "twin"
    twin.mkdir()
    assert len(safe_extract(bundle, twin, max_total_bytes=2000)) == 2


def test_not_a_tarball(tmp_path: Path, dest: Path) -> None:
    bad = tmp_path / "junk.tar.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(UnsafeArchiveError, match="not a readable"):
        safe_extract(bad, dest)


def test_is_within_is_a_path_check_not_a_string_prefix() -> None:
    assert is_within("/srv/files", "/srv/files")
    assert is_within("/srv/files", "/srv/files/a/b")
    assert not is_within("/srv/files", "/srv/files-evil/x")
    assert not is_within("/srv/files", "/srv")


@pytest.mark.parametrize("name", ["", "/abs", "a/../b", "..", ".", "a/./b", "a//b", "a\x00b"])
def test_check_member_name_refuses(name: str) -> None:
    with pytest.raises(UnsafeArchiveError):
        check_member_name(name)


@pytest.mark.parametrize("name,clean", [("a", "a"), ("a/b/", "a/b"), ("a.b/..c", "a.b/..c")])
def test_check_member_name_accepts(name: str, clean: str) -> None:
    assert check_member_name(name) == clean
