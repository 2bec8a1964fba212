"""Helpers for the Go plugin / Go host tests: build the example host and plugin releases in
temp dirs, lay them out the way the node agent does (releases/<name>/<version>/ with
manifest.json and files/, `current` swapped atomically), run the host and talk to it."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import NOW

REPO_ROOT = Path(__file__).resolve().parent.parent
GO_PLUGIN = REPO_ROOT / "examples" / "go-plugin"
GO_HOST = REPO_ROOT / "examples" / "go-host"
EPOCH = "1700000000"
GO_ENV = {"GOPROXY": "off", "GOTOOLCHAIN": "local", "CGO_ENABLED": "1", "GOFLAGS": ""}
API = "hotrelease.example/gameapi"  # the module host and plugin share


def go_marks() -> list[Any]:
    """pytestmark for every Go test module: the toolchain, and cgo (plugins need a C
    compiler). .ci/run installs both, so these run in CI."""
    import pytest
    from conftest import requires_go

    return [requires_go, pytest.mark.go,
            pytest.mark.skipif(not (shutil.which("gcc") or shutil.which("cc")),
                               reason="Go plugins need cgo (a C compiler)")]


def go_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **GO_ENV, **extra}


def copy_sources(dest: Path) -> Path:
    """Copy the example plugin and the shared API module, keeping their relative layout
    (the plugin's go.mod replaces the API module with ../go-host/api). Returns the plugin dir."""
    ignore = shutil.ignore_patterns("dist", "*.so", "gamehost")
    shutil.copytree(GO_PLUGIN, dest / "go-plugin", ignore=ignore)
    shutil.copytree(GO_HOST / "api", dest / "go-host" / "api", ignore=ignore)
    return dest / "go-plugin"


def build_host(out: Path) -> Path:
    """The documented one-command host build."""
    subprocess.run([str(GO_HOST / "build.sh"), str(out)], check=True, env=go_env(),
                   capture_output=True, timeout=300)
    return out


def hotrelease_build(plugin_dir: Path, version: str, out: Path,
                     env: dict[str, str] | None = None) -> dict[str, Any]:
    """`hotrelease build` as CI runs it; returns its --json result."""
    proc = subprocess.run(
        [sys.executable, "-m", "hotrelease", "build", "--version", version, "--out", str(out),
         "--allow-dirty", "--now", NOW, "--json"],
        cwd=plugin_dir, env=go_env(SOURCE_DATE_EPOCH=EPOCH, **(env or {})),
        capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"hotrelease build {version} failed ({proc.returncode}):\n"
                             f"{proc.stderr}")
    return json.loads(proc.stdout)


def install_release(built: dict[str, Any], releases: Path, name: str = "arena") -> Path:
    """Store a build the way the agent does: releases/<name>/<version>/{manifest.json,files/}."""
    version = built["version"]
    target = releases / name / version
    (target / "files").mkdir(parents=True)
    shutil.copy(built["manifest"], target / "manifest.json")
    with tarfile.open(built["bundle"]) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(target / "files", filter="data")
        else:  # Python < 3.11.4
            tar.extractall(target / "files")
    return target


def activate(releases: Path, release_dir: Path, name: str = "arena") -> Path:
    """Point releases/<name>/current at release_dir with an atomic rename."""
    current = releases / name / "current"
    tmp = releases / name / ".current.tmp"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.unlink(missing_ok=True)
    os.symlink(release_dir, tmp)
    os.replace(tmp, current)
    return current


# --- the host process -----------------------------------------------------------------------


@dataclass
class HostProcess:
    proc: subprocess.Popen[bytes]
    addr: str
    log: Path
    host: str = field(init=False)
    port: int = field(init=False)

    def __post_init__(self) -> None:
        host, _, port = self.addr.rpartition(":")
        self.host, self.port = host, int(port)

    def connection(self, timeout: float = 30) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        conn = self.connection()
        try:
            return call(conn, method, path, body)
        finally:
            conn.close()

    def health(self) -> tuple[int, dict[str, Any]]:
        return self.request("GET", "/health")

    def sighup(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def wait_version(self, version: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            _, body = self.health()
            if body.get("version") == version:
                return body
            time.sleep(0.02)
        raise AssertionError(f"host never served {version}; last health {body}\n"
                             + self.log.read_text())

    def wait_reload_attempts(self, count: int, timeout: float = 30) -> dict[str, Any]:
        """Wait until reloads + refusals reach count (a reload was processed either way)."""
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            _, body = self.health()
            if body["reloads"] + body["refusals"] >= count:
                return body
            time.sleep(0.02)
        raise AssertionError(f"reload never processed; last health {body}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def call(conn: http.client.HTTPConnection, method: str, path: str,
         body: Any = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read() or b"{}")


def start_host(binary: Path, current: Path, workdir: Path, *extra: str,
               name: str = "arena") -> HostProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    addr_file = workdir / "addr"
    addr_file.unlink(missing_ok=True)
    log = workdir / "host.log"
    with log.open("ab") as logf:
        proc = subprocess.Popen(
            [str(binary), "-listen", "127.0.0.1:0", "-current", str(current), "-plugin", name,
             "-addr-file", str(addr_file), "-pidfile", str(workdir / "host.pid"), *extra],
            stdout=logf, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if addr_file.exists():
            return HostProcess(proc, addr_file.read_text().strip(), log)
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise AssertionError("host did not start:\n" + log.read_text())


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# --- reading a Go plugin as data (ELF), as the host's ABI check does ------------------------


def elf_symbols(path: Path) -> dict[str, bytes]:
    """Contents of the linker-made symbols the ABI check uses: go.link.thispluginpath and
    go.link.pkghashbytes.<import path> (the package fingerprints plugin.Open compares).
    Read with pyelftools, an ELF parser independent of `hotrelease.build.goabi`, so the test
    checks goabi against another reader, not against a copy of itself."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    out: dict[str, bytes] = {}
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        symtab = elf.get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection), f"{path}: no .symtab"
        for sym in symtab.iter_symbols():
            name = sym.name
            if not (name == "go.link.thispluginpath" or name.startswith("go.link.pkghashbytes.")):
                continue
            index = sym["st_shndx"]
            if not isinstance(index, int) or not 0 < index < elf.num_sections():
                continue
            section = elf.get_section(index)
            start = sym["st_value"] - section["sh_addr"]
            out[name] = section.data()[start:start + sym["st_size"]]
    return out


def package_hashes(path: Path) -> dict[str, str]:
    prefix = "go.link.pkghashbytes."
    return {k[len(prefix):]: v.hex() for k, v in elf_symbols(path).items()
            if k.startswith(prefix)}


def plugin_path_of(path: Path) -> str:
    return elf_symbols(path)["go.link.thispluginpath"].decode()
