"""Validly signed bundles of a hostile *shape* (deep or long paths, huge member counts, huge
or chained extended headers, more bytes than the node allows) and the agent's own cleanup.

Every refusal is a 422 `unsafe_archive` with a history record, the data dir byte-identical
except history, and an empty temp area; every hostile case has an accepted twin at the limit.
Archives are built for real: tarfile with crafted TarInfo, raw header bytes where tarfile
would not write the hostile shape itself.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tracemalloc
from pathlib import Path

import pytest
from conftest import agent_toml, craft_release, raw_upload, with_active_release

from hotrelease.agent import store as store_module
from hotrelease.agent.config import load_agent_config
from hotrelease.agent.store import Store, remove_tree
from hotrelease.errors import ConfigError, UnsafeArchiveError
from hotrelease.trust.archive import DEFAULT_LIMITS, ExtractLimits, safe_extract

MiB = 1024 * 1024
PLUGIN = b"def handle(event):\n    return {'ok': True}\n"

# --- archives -----------------------------------------------------------------------------


def member(name: str, data: bytes | None = PLUGIN, kind: bytes = tarfile.REGTYPE,
           pax: dict[str, str] | None = None) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    if pax:
        info.pax_headers = pax
    return info, data if kind == tarfile.REGTYPE else None


def tar_gz(path: Path, members: list, fmt: int = tarfile.PAX_FORMAT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", format=fmt) as tar:
        for info, data in members:
            if data is None:
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def header(name: str, kind: bytes, size: int) -> bytes:
    """One raw 512-byte ustar header block, any type and declared size."""
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode = kind, size, 0o644
    return info.tobuf(tarfile.USTAR_FORMAT)


def pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    n = len(body) + 1
    while len(body) + len(str(n)) != n:
        n = len(body) + len(str(n))
    return str(n).encode() + body


def raw_gz(path: Path, blocks: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb", compresslevel=6) as gz:
        for block in blocks:
            gz.write(block)
        gz.write(b"\0" * 1024)
    return path


def raw_member(name: str, data: bytes = PLUGIN) -> bytes:
    return header(name, tarfile.REGTYPE, len(data)) + pad(data)


def files_of(members: list) -> list[dict]:
    return [{"path": info.name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for info, data in members if data is not None]


def deep(depth: int, leaf: str = "plugin.py", part: str = "d") -> str:
    return "/".join([part] * (depth - 1) + [leaf])


# Names exactly at the default limits: the accepted twins.
AT_DEPTH = deep(DEFAULT_LIMITS.max_path_depth)
AT_NAME_MAX = "n" * 255
AT_LENGTH = "/".join(["a" * 255, "b" * 255, "c" * 255, "e" * 254, "x"])
AT_NAME_MAX_UTF8 = "é" * 127 + "x"  # 255 bytes, 128 characters
assert len(AT_LENGTH.encode()) == DEFAULT_LIMITS.max_path_length
assert len(AT_NAME_MAX_UTF8.encode()) == 255


# --- the agent -------------------------------------------------------------------------------


@pytest.fixture
def node(make_agent, build_plugin):
    """An agent with greeter 1.0.0 stored and active, and a signed 1.1.0 to re-sign."""
    agent = make_agent(max_upload=8 * MiB)
    return with_active_release(agent, build_plugin)


def signed(node, out: Path, bundle: Path, files: list[dict] | None = None):
    """Re-sign node.next over `bundle`; by default the manifest lists just plugin.py."""
    if files is None:
        files = files_of([member("plugin.py")])
    return craft_release(node.next, out / "signed", bundle=bundle, files=files)


def assert_refused(node, crafted, match: str | None = None, status: int = 422,
                   code: str = "unsafe_archive") -> dict:
    before, n = node.snapshot(), len(node.history())
    response = raw_upload(node, "greeter", crafted.version, crafted.manifest,
                          crafted.signature, crafted.bundle)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    if match is not None:
        assert match in error["message"], error["message"]
    assert len(error["message"]) < 1000  # a 20 KB name is not echoed back whole
    assert node.snapshot() == before, "a refusal changed the node"
    history = node.history()
    assert len(history) == n + 1
    assert history[-1]["result"] == "refused" and history[-1]["code"] == code
    assert list((node.data_dir / "tmp").iterdir()) == []
    return error


def assert_stored(node, crafted, names: list[str]) -> None:
    tmp_before = sorted((node.data_dir / "tmp").iterdir())
    response = raw_upload(node, "greeter", crafted.version, crafted.manifest,
                          crafted.signature, crafted.bundle)
    assert response.status_code == 201, response.text
    files = node.data_dir / "releases" / "greeter" / crafted.version / "files"
    for name in names:
        assert (files / name).read_bytes() == PLUGIN
    assert node.history()[-1]["result"] == "stored"
    assert sorted((node.data_dir / "tmp").iterdir()) == tmp_before


def twin(node, tmp_path: Path, names: list[str], fmt: int = tarfile.PAX_FORMAT) -> None:
    members = [member(n) for n in ["plugin.py", *names]]
    bundle = tar_gz(tmp_path / "twin" / "ok.tar.gz", members, fmt)
    assert_stored(node, signed(node, tmp_path / "twin", bundle, files_of(members)),
                  ["plugin.py", *names])


def high_water_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


# --- 1. path depth, path length, member count -------------------------------------------------

SHAPES = {
    # name: (members, format, expected words in the message, accepted twin names)
    "10,000 levels deep": ([member(deep(10_000))], tarfile.PAX_FORMAT, "max_path_length",
                           [AT_DEPTH]),
    "one level too deep": ([member(deep(DEFAULT_LIMITS.max_path_depth + 1))],
                           tarfile.PAX_FORMAT, "max_path_depth", [AT_DEPTH]),
    "deep, GNU long name": ([member(deep(2_000))], tarfile.GNU_FORMAT, "max_path_length",
                            [AT_DEPTH]),
    "path one byte too long": ([member(AT_LENGTH + "y")], tarfile.PAX_FORMAT,
                               "max_path_length", [AT_LENGTH]),
    "component of 256 bytes": ([member("n" * 256)], tarfile.PAX_FORMAT, "255 bytes",
                               [AT_NAME_MAX]),
    "component of 256 UTF-8 bytes": ([member("é" * 128)], tarfile.PAX_FORMAT, "255 bytes",
                                     [AT_NAME_MAX_UTF8]),
    "directory member too deep": ([member(deep(40) + "/", kind=tarfile.DIRTYPE)],
                                  tarfile.PAX_FORMAT, "max_path_depth", [AT_DEPTH]),
}


@pytest.mark.parametrize("case", list(SHAPES))
def test_deep_or_long_paths_are_refused_before_extraction(node, tmp_path, case) -> None:
    members, fmt, words, twin_names = SHAPES[case]
    bundle = tar_gz(tmp_path / "hostile.tar.gz", [member("plugin.py"), *members], fmt)
    crafted = signed(node, tmp_path, bundle, files_of([member("plugin.py"), *members]))
    assert_refused(node, crafted, words)
    twin(node, tmp_path, twin_names, fmt)


def test_more_members_than_the_limit(node, tmp_path) -> None:
    blocks = [raw_member("plugin.py")] + [header(f"f{i}", tarfile.REGTYPE, 0)
                                          for i in range(DEFAULT_LIMITS.max_members)]
    bundle = raw_gz(tmp_path / "many.tar.gz", blocks)
    assert_refused(node, signed(node, tmp_path, bundle), "max_members")
    twin(node, tmp_path, [])  # (a signed manifest listing 20,000 files is over 256 KiB)


def test_member_count_limit_unit(tmp_path) -> None:
    limits = ExtractLimits(max_members=50)
    hostile = tar_gz(tmp_path / "h.tar.gz", [member(f"f{i}") for i in range(51)])
    (tmp_path / "a").mkdir()
    with pytest.raises(UnsafeArchiveError, match="more than 50 files and directories"):
        safe_extract(hostile, tmp_path / "a", limits=limits)
    assert list((tmp_path / "a").iterdir()) == []
    ok = tar_gz(tmp_path / "ok.tar.gz", [member(f"f{i}") for i in range(50)])
    (tmp_path / "b").mkdir()
    assert len(safe_extract(ok, tmp_path / "b", limits=limits)) == 50


def test_implicit_parent_directories_count_as_members(tmp_path) -> None:
    limits = ExtractLimits(max_members=10)
    hostile = tar_gz(tmp_path / "dirs.tar.gz", [member(f"d{i}/x") for i in range(6)])  # 12
    dest = tmp_path / "a"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError, match="max_members"):
        safe_extract(hostile, dest, limits=limits)
    assert list(dest.iterdir()) == []  # refused before anything was created
    ok = tar_gz(tmp_path / "ok.tar.gz", [member(f"d{i}/x") for i in range(5)])  # 10
    (tmp_path / "b").mkdir()
    assert len(safe_extract(ok, tmp_path / "b", limits=limits)) == 5


def test_nothing_is_written_before_the_whole_archive_is_checked(tmp_path) -> None:
    """The bad member is the last one: the first 500 files are never created."""
    members = [member(f"f{i}") for i in range(500)] + [member(deep(100))]
    bundle = tar_gz(tmp_path / "late.tar.gz", members)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError, match="max_path"):
        safe_extract(bundle, dest)
    assert list(dest.iterdir()) == []


def test_whole_path_includes_the_agents_own_prefix(tmp_path) -> None:
    """A destination deep in the file system leaves less room: the whole path is bounded
    below PATH_MAX, so the OS never answers ENAMETOOLONG (which was a 500)."""
    dest = tmp_path
    while len(os.fsencode(dest)) < 3000:
        dest = dest / ("p" * 200)
    dest.mkdir(parents=True)
    bundle = tar_gz(tmp_path / "b.tar.gz", [member(AT_LENGTH)])
    with pytest.raises(UnsafeArchiveError, match="on this node would be longer"):
        safe_extract(bundle, dest)
    short = tar_gz(tmp_path / "s.tar.gz", [member("plugin.py")])
    assert len(safe_extract(short, dest)) == 1
    remove_tree(tmp_path / ("p" * 200))


# --- 9. extracted bytes and extended headers ---------------------------------------------------


def test_agent_cap_on_extracted_bytes_whatever_the_signer_declared(node, tmp_path) -> None:
    """The manifest (validly signed) declares 3 GiB; the agent's own cap (2 GiB) refuses it
    from the header, before a byte is written."""
    size = 3 * 1024 * MiB
    bundle = raw_gz(tmp_path / "big.tar.gz", [header("plugin.py", tarfile.REGTYPE, size)])
    files = [{"path": "plugin.py", "sha256": "0" * 64, "size": size}]
    assert_refused(node, signed(node, tmp_path, bundle, files), "max_extracted_bytes")
    twin(node, tmp_path, [])


def test_extracted_bytes_limit_unit(tmp_path) -> None:
    bundle = tar_gz(tmp_path / "b.tar.gz", [member("a", b"0" * 1000), member("b", b"0" * 1000)])
    limits = ExtractLimits(max_extracted_bytes=1999)
    (tmp_path / "d1").mkdir()
    with pytest.raises(UnsafeArchiveError, match="max_extracted_bytes"):
        safe_extract(bundle, tmp_path / "d1", limits=limits, max_total_bytes=10**9)
    (tmp_path / "d2").mkdir()
    with pytest.raises(UnsafeArchiveError, match="signed total"):
        safe_extract(bundle, tmp_path / "d2", max_total_bytes=1999)
    (tmp_path / "d3").mkdir()
    assert len(safe_extract(bundle, tmp_path / "d3", limits=ExtractLimits(
        max_extracted_bytes=2000), max_total_bytes=2000)) == 2


def _bomb(tmp_path: Path, kind: bytes, declared: int = 400 * MiB,
          present: int = 64 * MiB) -> Path:
    """An extended header declaring `declared` bytes, `present` of them actually there (zeros
    compress ~1000:1: a 64 MiB header is a ~64 KiB upload)."""
    name = "././@LongLink" if kind in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) \
        else "./PaxHeaders/plugin.py"
    return raw_gz(tmp_path / "bomb.tar.gz", [header(name, kind, declared), b"\0" * present,
                                             raw_member("plugin.py")])


BOMBS = {"pax": tarfile.XHDTYPE, "pax global": tarfile.XGLTYPE,
         "GNU long name": tarfile.GNUTYPE_LONGNAME, "GNU long link": tarfile.GNUTYPE_LONGLINK}


@pytest.mark.parametrize("case", list(BOMBS))
def test_huge_extended_header_is_refused_before_it_is_read(node, tmp_path, case) -> None:
    bundle = _bomb(tmp_path, BOMBS[case])
    assert bundle.stat().st_size < 256 * 1024
    before = high_water_kib(node.proc.pid)
    assert_refused(node, signed(node, tmp_path, bundle), "max_pax_header_bytes")
    grown = high_water_kib(node.proc.pid) - before
    assert grown < 32 * 1024, f"the agent grew by {grown} KiB reading one header"
    # twin: a real pax header (a 300-byte path) is fine
    twin(node, tmp_path, ["p/" + "q" * 250 + "/plugin.py"])


@pytest.mark.parametrize("case", list(BOMBS))
def test_huge_extended_header_unit_memory(tmp_path, case) -> None:
    bundle = _bomb(tmp_path, BOMBS[case])
    dest = tmp_path / "dest"
    dest.mkdir()
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeArchiveError, match="max_pax_header_bytes"):
            safe_extract(bundle, dest)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"peak {peak} bytes"


def test_pax_header_limit_is_the_configured_one(tmp_path) -> None:
    name = "p/" + "q" * 250 + "/plugin.py"  # a ~280-byte pax record, one 512-byte block
    bundle = tar_gz(tmp_path / "b.tar.gz", [member(name)])
    (tmp_path / "d1").mkdir()
    with pytest.raises(UnsafeArchiveError, match="max_pax_header_bytes"):
        safe_extract(bundle, tmp_path / "d1", limits=ExtractLimits(max_pax_header_bytes=511))
    (tmp_path / "d2").mkdir()
    assert len(safe_extract(bundle, tmp_path / "d2",
                            limits=ExtractLimits(max_pax_header_bytes=512))) == 1


def test_chained_extended_headers_are_refused(node, tmp_path) -> None:
    """3,000 empty pax headers in a row: tarfile recursed once per header (RecursionError,
    a 500 without a history record)."""
    chain = [header("./PaxHeaders/x", tarfile.XHDTYPE, 0)] * 3000
    bundle = raw_gz(tmp_path / "chain.tar.gz", [*chain, raw_member("plugin.py")])
    assert_refused(node, signed(node, tmp_path, bundle), "chained")
    twin(node, tmp_path, [])


def _pax(records: list[tuple[str, str]], kind: bytes = tarfile.XHDTYPE) -> bytes:
    data = b"".join(pax_record(k, v) for k, v in records)
    return header("./PaxHeaders/plugin.py", kind, len(data)) + pad(data)


PAX_SHAPES = {
    # GNU sparse 1.0: tarfile reads the sparse map block by block, as long as it says
    "GNU sparse 1.0 map": [_pax([("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"),
                                 ("GNU.sparse.name", "plugin.py"),
                                 ("GNU.sparse.realsize", "10")]),
                           header("plugin.py", tarfile.REGTYPE, 400 * 1024 + 512)
                           + pad(b"99999999999\n" + b"1\n" * (200 * 1024))],
    # a global header is copied into every member: thousands of keys x thousands of members
    "global header with many keys": [_pax([(f"k{i}", "v") for i in range(4000)],
                                          tarfile.XGLTYPE),
                                     *[raw_member(f"f{i}") for i in range(200)]],
    "unknown pax keyword": [_pax([("SCHILY.xattr.user.x", "1")]), raw_member("plugin.py")],
    "long uname": [_pax([("uname", "u" * 10_000)]), raw_member("plugin.py")],
    "link name on a regular file": [_pax([("linkpath", "/etc/passwd")]),
                                    raw_member("plugin.py")],
}


@pytest.mark.parametrize("case", list(PAX_SHAPES))
def test_extended_header_contents_are_bounded(tmp_path, case) -> None:
    bundle = raw_gz(tmp_path / "x.tar.gz", PAX_SHAPES[case])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError):
        safe_extract(bundle, dest)
    assert list(dest.iterdir()) == []
    # twin: the keywords tarfile itself writes are fine
    ok = raw_gz(tmp_path / "ok.tar.gz", [
        _pax([("path", "plugin.py"), ("mtime", "1700000000.25"), ("uname", "build")]),
        raw_member("ignored-name")])
    (tmp_path / "ok").mkdir()
    assert [e.path for e in safe_extract(ok, tmp_path / "ok")] == ["plugin.py"]


def test_real_bundles_still_extract(tmp_path, build_plugin) -> None:
    release = build_plugin("1.0.0")
    (tmp_path / "d").mkdir()
    assert sorted(e.path for e in safe_extract(release.bundle, tmp_path / "d")) == \
        ["greetings.txt", "plugin.py"]


# --- limits in agent.toml ---------------------------------------------------------------------

LIMIT_KEYS = ("max_extracted_bytes", "max_members", "max_path_depth", "max_path_length",
              "max_pax_header_bytes")


def _config(tmp_path: Path, make_key, lines: str) -> Path:
    key = tmp_path / "keys" / "release.pub"
    if not key.exists():
        make_key("release")
    text = agent_toml(tmp_path / "data", 7701, [key])
    text = text.replace("max_upload_bytes =", f"{lines}\nmax_upload_bytes =", 1)
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_limits_default_and_configured(tmp_path, make_key) -> None:
    cfg = load_agent_config(_config(tmp_path, make_key, ""))
    assert cfg.extract_limits == DEFAULT_LIMITS
    lines = "\n".join(f"{k} = {v}" for k, v in zip(LIMIT_KEYS, (1000, 7, 3, 300, 4096),
                                                   strict=True))
    cfg = load_agent_config(_config(tmp_path, make_key, lines))
    assert cfg.extract_limits == ExtractLimits(1000, 7, 3, 300, 4096)


@pytest.mark.parametrize("key,value,expected", [
    ("max_members", "0", "expected an integer >= 1"),
    ("max_extracted_bytes", "-5", "expected an integer >= 1"),
    ("max_path_depth", '"deep"', "expected an integer, got string"),
    ("max_path_length", "5000", "expected an integer <= 3839"),
    ("max_pax_header_bytes", "100", "expected an integer >= 512"),
    ("max_pax_header_bytes", "1e9", "expected an integer, got number"),
])
def test_bad_limit_names_file_and_key(tmp_path, make_key, key, value, expected) -> None:
    path = _config(tmp_path, make_key, f"{key} = {value}")
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    assert str(info.value).startswith(f"{path}: agent -> {key}: ")
    assert expected in str(info.value)


@pytest.mark.parametrize("key,value,hostile,ok", [
    ("max_path_depth", 3, ["a/b/c/plugin.py"], ["a/b/plugin.py"]),
    ("max_path_length", 40, ["d/" + "x" * 39], ["d/" + "x" * 38]),
    ("max_members", 3, ["a", "b", "c"], ["a", "b"]),
    ("max_extracted_bytes", 3 * len(PLUGIN), ["a", "b", "c"], ["a", "b"]),
    ("max_pax_header_bytes", 512, ["d/" + "/".join(["x" * 200] * 3)],
     ["d/" + "x" * 200 + "/" + "y" * 190]),
])
def test_configured_limits_apply_to_uploads(make_agent, build_plugin, tmp_path, key, value,
                                            hostile, ok) -> None:
    agent = make_agent(start=False, max_upload=MiB)
    agent.config.write_text(agent.config.read_text().replace(
        "max_upload_bytes =", f"{key} = {value}\nmax_upload_bytes =", 1))
    agent.start()
    agent.next = build_plugin("1.1.0")
    members = [member(n) for n in ["plugin.py", *hostile]]
    bundle = tar_gz(tmp_path / "h.tar.gz", members)
    assert_refused(agent, signed(agent, tmp_path, bundle, files_of(members)), key)
    twin(agent, tmp_path, ok)


# --- cleanup of the agent's own areas -----------------------------------------------------------


def make_deep_tree(root: Path, depth: int) -> None:
    """A tree deeper than any recursion limit (and than PATH_MAX), built with dir fds."""
    root.mkdir(parents=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(depth):
            os.mkdir("d", dir_fd=fd)
            if i % 2500 == 0:
                file_fd = os.open("ro.py", os.O_WRONLY | os.O_CREAT, 0o444, dir_fd=fd)
                os.close(file_fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def test_remove_tree_is_iterative_and_stays_inside(tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    tree = tmp_path / "tree"
    make_deep_tree(tree, 10_000)
    os.symlink(outside, tree / "link")
    wide = tree / "wide"
    wide.mkdir()
    for i in range(300):
        (wide / f"s{i}").mkdir()
        (wide / f"s{i}" / "f").write_text("x")
    assert remove_tree(tree) is True
    assert not tree.exists() and (outside / "keep").read_text() == "keep"
    assert remove_tree(tmp_path / "missing") is True


def test_leftovers_thousands_deep_do_not_stop_start_up(node) -> None:
    """A failed extraction of a deep tree used to stay in tmp/, and start-up cleanup died of a
    RecursionError on every restart."""
    node.stop()
    # 3,000 levels: three times the recursion limit (10,000 are removed in the unit test
    # above; rmdir costs ~1 ms a level on a busy disk, and start-up waits for it).
    make_deep_tree(node.data_dir / "tmp" / "upload-0123456789abcdef" / "release" / "files",
                   3_000)
    (node.data_dir / "plugins" / "greeter" / ".state.json.tmp-abcd").write_text("{}")
    node.start()
    assert node.client().health()["ok"] is True
    assert list((node.data_dir / "tmp").iterdir()) == []
    assert not (node.data_dir / "plugins" / "greeter" / ".state.json.tmp-abcd").exists()
    assert node.client().plugin("greeter")["current"] == "1.0.0"


def _make_unremovable(path: Path) -> tuple[str, Path] | None:
    """A leftover even root cannot remove: immutable (chattr +i) or a mount point."""
    path.mkdir(parents=True)
    (path / "f").write_text("x")
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(path)],
                                                 capture_output=True).returncode == 0:
        return "chattr", path
    if shutil.which("mount") and subprocess.run(["mount", "-t", "tmpfs", "none", str(path)],
                                                capture_output=True).returncode == 0:
        return "mount", path
    return None


def _undo(how: tuple[str, Path]) -> None:
    kind, path = how
    subprocess.run(["chattr", "-i", str(path)] if kind == "chattr" else ["umount", str(path)],
                   check=True)


def test_unremovable_leftover_is_logged_and_the_agent_serves(node) -> None:
    node.stop()
    how = _make_unremovable(node.data_dir / "tmp" / "upload-stuck" / "release")
    if how is None:
        pytest.skip("needs chattr +i or mount (root with CAP_LINUX_IMMUTABLE/SYS_ADMIN)")
    try:
        node.start()
        assert node.client().health()["ok"] is True
        assert "cannot remove" in node.log.read_text()
        records = [json.loads(line) for line in
                   (node.data_dir / "agent-history.jsonl").read_text().splitlines()]
        assert records[-1]["action"] == "cleanup" and records[-1]["result"] == "failed"
        assert "upload-stuck" in records[-1]["path"]
        # the node still works: an upload goes through
        twin(node, node.root / "t", [])
    finally:
        node.stop()
        _undo(how)
    # twin: once removable, the next start cleans it
    node.start()
    assert list((node.data_dir / "tmp").iterdir()) == []


def test_store_open_survives_a_failing_cleanup(tmp_path, monkeypatch) -> None:
    """The same, in-process and on any machine: the removal itself fails."""
    store = Store(tmp_path / "data")
    store.open()
    (store.tmp / "upload-x").mkdir()
    (store.tmp / "upload-x" / "f").write_text("x")
    assert store._lock_fd is not None  # open() took the lock
    os.close(store._lock_fd)

    def broken(path: Path) -> None:
        raise OSError(5, "Input/output error", str(path))

    monkeypatch.setattr(store_module, "_rmtree", broken)
    again = Store(tmp_path / "data")
    again.open()  # does not raise
    record = json.loads((again.root / "agent-history.jsonl").read_text().splitlines()[-1])
    assert record["action"] == "cleanup" and record["path"].endswith("upload-x")
    assert remove_tree(again.tmp / "upload-x") is False  # best effort, never raises
    monkeypatch.undo()
    assert remove_tree(again.tmp / "upload-x") is True
