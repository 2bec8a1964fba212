"""ABI facts of a Go plugin, recorded in the manifest so a host can refuse a mismatched
plugin *before* `plugin.Open` (a failed open can break later loads: golang/go#32095)."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hotrelease.errors import BuildError

GO_ENV_FACTS = ("GOVERSION", "GOOS", "GOARCH", "CGO_ENABLED", "GOAMD64", "GOARM",
                "GOEXPERIMENT")


def _go(args: list[str], *, cwd: Path, env: Mapping[str, str]) -> str:
    try:
        proc = subprocess.run(["go", *args], cwd=cwd, env=dict(env), capture_output=True,
                              text=True, timeout=120)
    except FileNotFoundError:
        raise BuildError("the Go toolchain (`go`) is not installed") from None
    if proc.returncode != 0 or not proc.stdout.strip():
        raise BuildError(f"go {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def elf_go_symbols(path: Path) -> dict[str, bytes]:
    """go.link.thispluginpath and go.link.pkghashbytes.* from a Go ELF object's .symtab."""
    import struct

    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise BuildError(f"{path.name}: not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    out: dict[str, bytes] = {}
    for sh in sections:
        if sh[1] != 2:  # SHT_SYMTAB
            continue
        strtab = sections[sh[6]]
        for off in range(sh[4], sh[4] + sh[5], 24):
            st_name, _, _, shndx, value, size = struct.unpack_from("<IBBHQQ", data, off)
            name_end = data.index(b"\0", strtab[4] + st_name)
            name = data[strtab[4] + st_name:name_end].decode()
            if (name == "go.link.thispluginpath" or name.startswith("go.link.pkghashbytes.")) \
                    and 0 < shndx < len(sections):
                sect = sections[shndx]
                start = sect[4] + value - sect[3]
                out[name] = data[start:start + size]
    return out


def go_abi_facts(binary: Path, *, cwd: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """ABI facts of a Go plugin. go1.19 plugins carry no build info (`go version -m` learns
    nothing from them), so: the toolchain and module graph from the build's own environment,
    and the package fingerprints plugin.Open compares, read from the .so."""
    import json

    goenv = json.loads(_go(["env", "-json", *GO_ENV_FACTS], cwd=cwd, env=env))
    facts: dict[str, Any] = {
        "go_version": goenv["GOVERSION"], "goos": goenv["GOOS"], "goarch": goenv["GOARCH"],
        "cgo_enabled": goenv["CGO_ENABLED"], "buildmode": "plugin",
    }
    for key in ("GOAMD64", "GOARM", "GOEXPERIMENT"):
        if goenv.get(key):
            facts[key.lower()] = goenv[key]
    modules: dict[str, str] = {}
    replacements: dict[str, str] = {}
    decoder = json.JSONDecoder()
    text, pos = _go(["list", "-m", "-json", "all"], cwd=cwd, env=env), 0
    while pos < len(text.rstrip()):
        while text[pos].isspace():
            pos += 1
        mod, pos = decoder.raw_decode(text, pos)
        if mod.get("Main"):
            facts["main_module"] = mod["Path"]
            continue
        modules[mod["Path"]] = mod.get("Version", "")
        if rep := mod.get("Replace"):
            replacements[mod["Path"]] = rep["Path"] + (f"@{rep['Version']}"
                                                       if rep.get("Version") else "")
    facts["modules"] = modules
    if replacements:
        facts["replacements"] = replacements
    syms = elf_go_symbols(binary)
    prefix = "go.link.pkghashbytes."
    facts["package_hashes"] = {k[len(prefix):]: v.hex() for k, v in sorted(syms.items())
                               if k.startswith(prefix)}
    if not facts["package_hashes"]:
        raise BuildError(f"{binary.name} has no Go package fingerprints: "
                         "not a Go plugin, or stripped")
    return facts
