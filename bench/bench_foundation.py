#!/usr/bin/env python3
"""Foundation benchmarks for hotrelease: checksum, bundling and CLI start-up.

Prints Markdown tables (paste them into issue notes as they are):

1. checksum  -- `hotrelease.trust.digest.sha256_file` on a large file (warm page cache) against
                `openssl dgst -sha256` and `sha256sum` in the same run, a chunk-size sweep, and
                the peak RSS of a separate process computing our checksum for two file sizes.
2. bundle    -- `hotrelease.build.bundle.create_bundle` on a generated tree (text, random binary,
                .so-like binary, a few hundred small files) against
                `tar --sort=name ... | gzip -n -6` and tarfile's `w:gz` (default level 9).
3. startup   -- `hotrelease --help` wall time (median, p90) next to `python -c pass`, and the
                top imports of `python -X importtime -m hotrelease --help`.

Stdlib only (plus the project). Every file is created under one temp dir that is always removed.
Not a timed test: goals are reported as ok/MISSED, the exit status is 0 either way.

    python bench/bench_foundation.py             # full run: 1 GiB checksum file, ~100 MiB tree
    python bench/bench_foundation.py --quick     # everything small, < 20 s (smoke run)
    python bench/bench_foundation.py --size-mib 256 --only checksum
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
SECTIONS = ("checksum", "bundle", "startup")
HEAVY_AT_HELP = ("cryptography", "git", "requests", "fastapi", "uvicorn", "pydantic",
                 "httptools", "starlette")


# --------------------------------------------------------------------------- helpers


def _project():
    """Import the project (installed, or from the repository this script lives in)."""
    try:
        import hotrelease  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT))
    from hotrelease.build.bundle import create_bundle
    from hotrelease.trust.digest import CHUNK, sha256_file
    return sha256_file, create_bundle, CHUNK


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def p90(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return xs[0]
    return statistics.quantiles(xs, n=10, method="inclusive")[8]


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]],
                align: str = "", notes: Sequence[str] = ()) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align.ljust(len(headers), "r")

    def fmt(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if a == "l" else c.rjust(w)
                                 for c, w, a in zip(row, widths, align, strict=True)) + " |"

    print(f"\n### {title}\n")
    print(fmt(cells[0]))
    print("|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2))
                         for w, a in zip(widths, align, strict=True)) + "|")
    for row in cells[1:]:
        print(fmt(row))
    for note in notes:
        print(f"\n{note}")
    sys.stdout.flush()


T = TypeVar("T")


def timed(fn: Callable[..., T]) -> tuple[float, T]:
    """fn is called with no arguments (`...`: lambdas that bind loop variables as defaults)."""
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def run(cmd: Sequence[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


TIME = Path("/usr/bin/time")


def rss_method() -> str:
    return ("/usr/bin/time -f %M (GNU time forks the child from its own small process)"
            if TIME.exists() else
            "os.wait4 ru_maxrss (no /usr/bin/time: figures include the fork of this "
            "benchmark process, so they are upper bounds)")


def run_rusage(cmd: Sequence[str], tmp: Path) -> tuple[str, float]:
    """Run cmd as a child; return (stdout, peak RSS MiB of that very child).

    Linux carries a forked child's RSS high-water mark across exec, so a child forked from
    this (big) benchmark process would report at least our own RSS. GNU time forks from a
    ~2 MiB process, so it measures the command alone; os.wait4 is the fallback."""
    report = tmp / "rss.txt"
    full = [str(TIME), "-f", "%M", "-o", str(report), *cmd] if TIME.exists() else list(cmd)
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=_child_env())
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{cmd!r} failed ({proc.returncode}): {out.strip()}")
    if TIME.exists():
        kib = int(report.read_text().split()[-1])
        report.unlink()
        return out, kib / 1024
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return out, usage.ru_maxrss * scale / MiB


def write_random_file(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 4 * MiB)
            fh.write(rng.randbytes(n))
            left -= n


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def print_header(args: argparse.Namespace) -> None:
    def out(cmd: list[str]) -> str:
        try:
            return run(cmd, cwd=ROOT).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "?"

    dirty = "dirty" if out(["git", "status", "--porcelain", "--untracked-files=no"]) else "clean"
    sha_ni = "yes" if " sha_ni" in (Path("/proc/cpuinfo").read_text()
                                    if Path("/proc/cpuinfo").exists() else "") else "no/unknown"
    import ssl
    print("## hotrelease foundation benchmark\n")
    print(f"- when: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; "
          f"mode: {'quick' if args.quick else 'full'}")
    print(f"- repo: {ROOT} @ {out(['git', 'rev-parse', '--short', 'HEAD'])} "
          f"(tracked files {dirty}; the working tree is what was measured)")
    print(f"- python {platform.python_version()} ({sys.executable}), hashlib backend "
          f"{ssl.OPENSSL_VERSION}; openssl CLI: {out(['openssl', 'version'])}")
    print(f"- cpu: {cpu_model()} x{os.cpu_count()}, SHA-NI: {sha_ni}; "
          f"load avg at start {load()}")


# --------------------------------------------------------------------------- 1. checksum


def _sha256_chunked(path: Path, chunk: int) -> str:
    digest = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(view):
            digest.update(view[:n])
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _ext_digest(cmd: list[str], path: Path) -> str:
    line = run([*cmd, str(path)]).stdout.strip()
    return line.rsplit("= ", 1)[1] if "= " in line else line.split()[0]


def bench_checksum(tmp: Path, args: argparse.Namespace) -> None:
    sha256_file, _, chunk = _project()
    size = args.size_mib * MiB
    small = max(size // 4, MiB)
    big_path, small_path, empty = tmp / "big.bin", tmp / "small.bin", tmp / "empty.bin"
    t_gen, _ = timed(lambda: write_random_file(big_path, size, 1))
    write_random_file(small_path, small, 2)
    empty.write_bytes(b"")
    print(f"\n(created {args.size_mib} MiB test file in {t_gen:.1f} s; "
          f"{args.runs} timed runs per tool, interleaved, after one warm-up each)")

    openssl, sha256sum = shutil.which("openssl"), shutil.which("sha256sum")
    tools: dict[str, Callable[[], str]] = {
        f"hotrelease sha256_file ({chunk // 1024} KiB readinto, in-process)":
            lambda: sha256_file(big_path)[0],
    }
    startup: dict[str, float] = {}
    if openssl:
        tools["openssl dgst -sha256"] = lambda: _ext_digest([openssl, "dgst", "-sha256"],
                                                            big_path)
    if sha256sum:
        tools["sha256sum (coreutils)"] = lambda: _ext_digest([sha256sum], big_path)
    # External tools are timed as whole processes: subtract their start-up cost (median of a
    # run on an empty file) so that the comparison is hashing against hashing.
    cmd: list[str | None] | Callable[[Path], list[str]]  # a command here, a maker in 1c
    for name, cmd in (("openssl dgst -sha256", [openssl, "dgst", "-sha256"]),
                      ("sha256sum (coreutils)", [sha256sum])):
        if name in tools:
            startup[name] = median([timed(lambda c=cmd: _ext_digest(c, empty))[0]
                                    for _ in range(5)])

    times: dict[str, list[float]] = {name: [] for name in tools}
    digests: dict[str, str] = {}
    for name, fn in tools.items():  # warm-up: page cache, binaries, branch predictors
        digests[name] = fn()
    for _ in range(args.runs):
        for name, fn in tools.items():
            times[name].append(timed(fn)[0])

    def mibs(name: str) -> float:
        return size / MiB / max(median(times[name]) - startup.get(name, 0.0), 1e-9)

    ref = mibs("openssl dgst -sha256") if "openssl dgst -sha256" in tools else None
    rows = []
    for name in tools:
        ratio = f"{mibs(name) / ref:.2f}x" if ref else "n/a"
        rows.append([name, f"{median(times[name]):.3f}", f"{min(times[name]):.3f}",
                     f"{startup.get(name, 0.0) * 1000:.1f}", f"{mibs(name):,.0f}", ratio])
    ours = next(iter(tools))
    verdict = ("n/a (openssl not found)" if ref is None else
               f"{mibs(ours) / ref:.2f}x -> {'ok' if mibs(ours) / ref >= 0.9 else 'MISSED'}")
    agree = "yes" if len(set(digests.values())) == 1 else f"NO: {digests}"
    print_table(f"1a. SHA-256 of a {args.size_mib} MiB file, warm page cache",
                ["tool", "median s", "min s", "start-up ms (subtracted)", "MiB/s", "vs openssl"],
                rows, "lrrrrr",
                [f"Goal >= 0.9x openssl: {verdict}. Digests agree: {agree}."])

    # Chunk-size sweep of the same readinto loop, plus hashlib.file_digest (256 KiB buffer).
    sweep: dict[str, Callable[..., str]] = {  # called with no arguments
        f"readinto {c // 1024} KiB{' (current CHUNK)' if c == chunk else ''}":
            (lambda c=c: _sha256_chunked(big_path, c))
        for c in (64 * 1024, 256 * 1024, MiB, 4 * MiB, 16 * MiB)
    }
    sweep["hashlib.file_digest (256 KiB)"] = lambda: _file_digest(big_path)
    sweep_times: dict[str, list[float]] = {name: [] for name in sweep}
    for _ in range(max(args.runs - 2, 1)):
        for name, fn in sweep.items():
            t, digest = timed(fn)
            assert digest == digests[ours], name
            sweep_times[name].append(t)
    rows = []
    for name, ts in sweep_times.items():
        rate = size / MiB / median(ts)
        rows.append([name, f"{median(ts):.3f}", f"{rate:,.0f}",
                     f"{rate / ref:.2f}x" if ref else "n/a"])
    print_table("1b. Chunk-size sweep (in-process, same loop as sha256_stream)",
                ["variant", "median s", "MiB/s", "vs openssl"], rows, "lrrr")

    # Peak RSS: one fresh process per measurement, read with os.wait4.
    ours_code = ("import sys; from pathlib import Path; from hotrelease.trust.digest import "
                 "sha256_file; print(sha256_file(Path(sys.argv[1]))[0])")
    naive_code = ("import sys, hashlib; from pathlib import Path; "
                  "print(hashlib.sha256(Path(sys.argv[1]).read_bytes()).hexdigest())")
    py = sys.executable
    variants: list[tuple[str, Callable[[Path], list[str]]]] = [
        ("hotrelease sha256_file (separate python)", lambda p: [py, "-c", ours_code, str(p)]),
    ]
    if openssl:
        variants.append(("openssl dgst -sha256", lambda p: [openssl, "dgst", "-sha256", str(p)]))
    if size <= 2048 * MiB:  # contrast: proves the measurement sees file-sized buffers
        variants.append(("contrast: hashlib.sha256(read_bytes())",
                         lambda p: [py, "-c", naive_code, str(p)]))
    base = run_rusage([py, "-c", "import hotrelease.trust.digest"], tmp)[1]
    rows = [["baseline: python -c 'import hotrelease.trust.digest'", f"{base:.1f}", f"{base:.1f}",
             "+0.0", ""]]
    ours_peak = 0.0
    for name, cmd in variants:
        outs = [run_rusage(cmd(p), tmp) for p in (small_path, big_path)]
        assert outs[1][0].strip().endswith(digests[ours]), (name, outs[1][0])
        rss = [rss for _, rss in outs]
        goal = ""
        if name.startswith("hotrelease"):
            ours_peak = max(rss)
            goal = "ok" if ours_peak < 100 else "MISSED"
        rows.append([name, f"{rss[0]:.1f}", f"{rss[1]:.1f}", f"{rss[1] - rss[0]:+.1f}", goal])
    print_table("1c. Peak RSS (MiB) of a separate process computing the checksum",
                ["process", f"{small // MiB} MiB file", f"{size // MiB} MiB file",
                 "growth", "goal < 100 MiB"], rows, "lrrrl",
                [f"Ours peaks at {ours_peak:.1f} MiB. Measured with {rss_method()}."])
    for p in (big_path, small_path, empty):
        p.unlink()


# --------------------------------------------------------------------------- 2. bundle

WORDS = ("func return if else for range package import type struct interface map chan go "
         "defer err nil string int64 uint32 byte bool true false player session room match "
         "score reward inventory item quest guild battle damage heal buff cooldown config "
         "handler request response context ctx log info warn error debug metrics counter "
         "gauge latency tick frame state snapshot delta sync rpc client server node shard "
         "lobby queue timeout retry backoff version plugin reload swap atomic pointer").split()


def _elf_files() -> list[Path]:
    """Shared objects of this Python installation (>= 256 KiB, largest first, then by name):
    real machine code compresses like a Go plugin does (about 3-4x with gzip -6)."""
    libdir = Path(sysconfig.get_config_var("LIBDIR") or sys.prefix)
    found = []
    for p in libdir.rglob("*.so"):
        try:
            if p.is_file() and not p.is_symlink() and p.stat().st_size >= 256 * 1024:
                found.append(p)
        except OSError:
            continue
    return sorted(found, key=lambda p: (-p.stat().st_size, str(p)))


def make_tree(root: Path, total: int, n_small: int, seed: int = 7) -> tuple[int, int]:
    """A plugin-build-like tree: ~40% text, ~25% random binary (assets, already compressed),
    ~30% real shared objects from this Python's LIBDIR (skewed synthetic bytes if none),
    n_small small files. Returns
    (file count, total bytes)."""
    rng = random.Random(seed)
    lines = []
    size = 0
    while size < 4 * MiB:
        indent = "\t" * rng.randint(0, 3)
        line = indent + " ".join(rng.choices(WORDS, k=rng.randint(3, 12))) + "\n"
        lines.append(line)
        size += len(line)
    corpus = "".join(lines).encode()
    skew = bytes([0] * 192 + list(range(1, 65)))  # 3/4 zero bytes, 64 other values
    table = bytes.maketrans(bytes(range(256)), skew)
    count = written = 0

    def put(rel: str, data: bytes) -> None:
        nonlocal count, written
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        count += 1
        written += len(data)

    def fill(budget: int, lo: int, hi: int, make: Callable[[int, int], None]) -> None:
        i = 0
        while budget > 0:
            n = min(budget, rng.randint(lo, hi))
            make(i, n)
            budget -= n
            i += 1

    def text(i: int, n: int) -> None:
        start = rng.randrange(0, len(corpus) - min(n, len(corpus) - 1))
        data = (corpus[start:] + corpus)[:n] if n > len(corpus) - start else \
            corpus[start:start + n]
        put(f"src/pkg{i % 8}/file{i:03d}.go", data)

    fill(int(total * 0.40), 64 * 1024, 2 * MiB, text)
    fill(int(total * 0.25), 512 * 1024, 8 * MiB,
         lambda i, n: put(f"assets/blob{i:02d}.bin", rng.randbytes(n)))
    elves = _elf_files()
    so_budget = int(total * 0.30)
    for i, elf in enumerate(elves):  # real shared objects: the realistic binary mix
        if so_budget <= 0:
            break
        data = elf.read_bytes()[:so_budget]
        put(f"lib/plugin{i:03d}.so", data)
        so_budget -= len(data)
    fill(so_budget, 1 * MiB, 16 * MiB,  # fallback when no .so files are found
         lambda i, n: put(f"lib/synthetic{i:02d}.so", rng.randbytes(n).translate(table)))
    for i in range(n_small):
        n = rng.randint(200, 16 * 1024)
        start = rng.randrange(0, len(corpus) - n)
        put(f"conf/d{i % 20:02d}/small{i:03d}.{('json', 'lua', 'toml')[i % 3]}",
            corpus[start:start + n])
    return count, written


def _tar_gzip(src: Path, out: Path) -> None:
    with open(out, "wb") as fh:
        tar = subprocess.Popen(["tar", "--sort=name", "--mtime=@0", "--owner=0", "--group=0",
                                "--numeric-owner", "-cf", "-", "."], cwd=src,
                               stdout=subprocess.PIPE)
        gz = subprocess.Popen(["gzip", "-n", "-6"], stdin=tar.stdout, stdout=fh)
        assert tar.stdout is not None
        tar.stdout.close()
        if gz.wait() or tar.wait():
            raise RuntimeError("tar | gzip failed")


def _tarfile(src: Path, out: Path, level: int | None) -> None:
    kw: dict[str, Any] = {} if level is None else {"compresslevel": level}
    with tarfile.open(out, "w:gz", **kw) as tar:
        tar.add(str(src), arcname=".")


def _sha(path: Path) -> str:
    return _sha256_chunked(path, MiB)


def bench_bundle(tmp: Path, args: argparse.Namespace) -> None:
    _, create_bundle, _ = _project()
    src, out = tmp / "tree", tmp / "out"
    src.mkdir()
    out.mkdir()
    t_gen, (count, nbytes) = timed(lambda: make_tree(src, args.bundle_mib * MiB,
                                                     args.small_files))
    for p in src.rglob("*"):  # warm the page cache
        if p.is_file():
            p.read_bytes()
    print(f"\n(generated {count} files, {nbytes / MiB:.1f} MiB, in {t_gen:.1f} s; "
          f"{args.bundle_runs} timed runs per variant, interleaved)")

    variants: dict[str, Callable[[Path], object]] = {
        "hotrelease create_bundle (gzip 6, + sha256 per file)":
            lambda o: create_bundle(src, o, 0),
    }
    if shutil.which("tar") and shutil.which("gzip"):
        variants["tar --sort=name ... | gzip -n -6"] = lambda o: _tar_gzip(src, o)
    variants["tarfile w:gz compresslevel=6 (plain add)"] = lambda o: _tarfile(src, o, 6)
    variants["tarfile w:gz default (level 9)"] = lambda o: _tarfile(src, o, None)

    times: dict[str, list[float]] = {name: [] for name in variants}
    sizes: dict[str, int] = {}
    ours_digests: set[str] = set()
    ours = next(iter(variants))
    for _ in range(args.bundle_runs):
        for i, (name, fn) in enumerate(variants.items()):
            target = out / f"v{i}.tar.gz"
            t, result = timed(lambda fn=fn, target=target: fn(target))
            times[name].append(t)
            sizes[name] = target.stat().st_size
            if name == ours:
                assert isinstance(result, list) and len(result) == count
                ours_digests.add(_sha(target))
            target.unlink()

    ref_name = "tar --sort=name ... | gzip -n -6"
    rows = []
    for name in variants:
        mbs = nbytes / 1e6 / median(times[name])
        vs = (f"{median(times[ref_name]) / median(times[name]):.2f}x"
              if ref_name in times else "n/a")
        rows.append([name, f"{median(times[name]):.2f}", f"{mbs:,.1f}", f"{sizes[name]:,}",
                     f"{sizes[name] / MiB:.2f}", f"{nbytes / sizes[name]:.2f}", vs])
    det = ("yes" if len(ours_digests) == 1 and args.bundle_runs > 1 else
           "not checked (1 run)" if args.bundle_runs == 1 else "NO")
    print_table(f"2. Bundling {count} files / {nbytes / MiB:.1f} MiB "
                "(MB/s = 10^6 input bytes per second)",
                ["variant", "median s", "MB/s", "output bytes", "output MiB", "ratio",
                 "speed vs tar|gzip"], rows, "lrrrrrr",
                [f"create_bundle byte-identical across runs: {det}. tar|gzip runs as two "
                 "processes (tar and gzip overlap on 2 cores); the Python variants are one "
                 "thread (zlib releases the GIL but nothing else runs)."])


# --------------------------------------------------------------------------- 3. startup


def parse_importtime(stderr: str) -> list[tuple[str, int, int, int]]:
    """(module, depth, self us, cumulative us) per line, in output (post-)order."""
    out = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cum_us, raw = line[len("import time:"):].split("|", 2)
        raw = raw[1:]
        name = raw.lstrip(" ")
        out.append((name, (len(raw) - len(name)) // 2, int(self_us), int(cum_us)))
    return out


def _parents(entries: list[tuple[str, int, int, int]]) -> dict[str, str]:
    """module -> module whose import pulled it in ('' for top level). importtime prints a
    child before its parent, so the parent is the next line one level shallower."""
    parents: dict[str, str] = {}
    for i, (name, depth, _, _) in enumerate(entries):
        parent = ""
        if depth:
            for later, d, _, _ in entries[i + 1:]:
                if d == depth - 1:
                    parent = later
                    break
        parents.setdefault(name, parent)
    return parents


def bench_startup(args: argparse.Namespace) -> None:
    py = sys.executable
    real = Path(py).parent / "hotrelease"
    on_path = shutil.which("hotrelease")
    env = _child_env()
    cmds: list[tuple[str, list[str], bool]] = [
        ("python -c pass", [py, "-c", "pass"], False),
        ("python -c 'import hotrelease.cli' (imports only)",
         [py, "-c", "import hotrelease.cli"], False),
    ]
    script = str(real) if real.exists() else on_path
    if script:
        cmds += [(f"hotrelease --version ({script})", [script, "--version"], False),
                 (f"hotrelease --help ({script})", [script, "--help"], True)]
        if on_path and Path(on_path).resolve() != Path(script).resolve():
            cmds.append((f"hotrelease --help via PATH ({on_path})", [on_path, "--help"], False))
    cmds.append(("python -m hotrelease --help", [py, "-m", "hotrelease", "--help"], True))

    times: dict[str, list[float]] = {name: [] for name, _, _ in cmds}
    for i in range(args.startup_runs + 2):  # two warm-up rounds, discarded
        for name, cmd, _ in cmds:
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    base = median(times["python -c pass"])
    rows: list[list[object]] = []
    for name, _, goal in cmds:
        ts = times[name]
        verdict = ("ok" if median(ts) < 0.2 else "MISSED") if goal else ""
        rows.append([name, f"{median(ts) * 1000:.0f}", f"{p90(ts) * 1000:.0f}",
                     f"{min(ts) * 1000:.0f}", f"{(median(ts) - base) * 1000:+.0f}", verdict])
    print_table(f"3a. CLI start-up, wall time of {args.startup_runs} runs each (subprocess)",
                ["command", "median ms", "p90 ms", "min ms", "vs python -c pass",
                 "goal median < 200 ms"], rows, "lrrrrl")

    runs = [parse_importtime(subprocess.run([py, "-X", "importtime", "-m", "hotrelease",
                                             "--help"], capture_output=True, text=True,
                                            env=env, check=True).stderr)
            for _ in range(args.importtime_runs)]
    cum: dict[str, list[int]] = {}
    own: dict[str, list[int]] = {}
    for entries in runs:
        for name, _, s, c in entries:
            cum.setdefault(name, []).append(c)
            own.setdefault(name, []).append(s)
    parents = _parents(runs[0])
    top = sorted(cum, key=lambda m: median(cum[m]), reverse=True)[:10]
    rows = [[i + 1, m, f"{median(cum[m]) / 1000:.1f}", f"{median(own[m]) / 1000:.1f}",
             parents.get(m) or "(top level / at run time)"] for i, m in enumerate(top)]
    total = median([sum(s for _, _, s, _ in entries) for entries in runs])
    print_table(f"3b. python -X importtime -m hotrelease --help: top-10 cumulative "
                f"(median of {args.importtime_runs} runs)",
                ["#", "module", "cumulative ms", "self ms", "imported by"], rows, "rlrrl",
                [f"Sum of all self times (total import work): {total / 1000:.1f} ms."])

    by_pkg: dict[str, float] = {}
    first: dict[str, str] = {}
    for name in own:
        pkg = name.split(".")[0]
        by_pkg[pkg] = by_pkg.get(pkg, 0.0) + median(own[name])
    # The first module of a package to finish importing sits inside the package's first
    # import; climb out of the package from there to find who pulled it in.
    for name, _, _, _ in runs[0]:
        pkg = name.split(".")[0]
        if pkg in first:
            continue
        via = parents.get(name, "")
        while via and via.split(".")[0] == pkg:
            via = parents.get(via, "")
        first[pkg] = via or "(top level / at run time)"
    top_pkgs = sorted(by_pkg, key=by_pkg.get, reverse=True)[:10]  # type: ignore[arg-type]
    rows = [[p, "stdlib" if p in sys.stdlib_module_names else "", f"{by_pkg[p] / 1000:.1f}",
             first.get(p, "")] for p in top_pkgs]
    heavy = [p for p in HEAVY_AT_HELP if p in by_pkg]
    print_table("3c. Import work by top-level package (sum of self times), top 10",
                ["package", "", "self ms", "first pulled in by"], rows, "llrl",
                ["Heavy packages imported by --help (should be lazy): "
                 + (", ".join(f"{p} ({by_pkg[p] / 1000:.1f} ms via {first[p]})"
                              for p in heavy) if heavy else "none") + "."])


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small sizes and few runs everywhere (< 20 s), for smoke runs")
    ap.add_argument("--size-mib", type=int, help="checksum file size (default 1024; quick 64)")
    ap.add_argument("--runs", type=int, help="timed checksum runs per tool (default 5; quick 3)")
    ap.add_argument("--bundle-mib", type=int, help="bundle tree size (default 100; quick 8)")
    ap.add_argument("--small-files", type=int, help="small files in the tree (default 300; "
                    "quick 100)")
    ap.add_argument("--bundle-runs", type=int, help="timed runs per bundler (default 3; quick 2)")
    ap.add_argument("--startup-runs", type=int, help="runs per start-up command (default 20; "
                    "quick 5)")
    ap.add_argument("--only", action="append", choices=SECTIONS,
                    help="run only this section (repeatable)")
    ap.add_argument("--tmpdir", type=Path, help="where to create the temp dir "
                    "(default: the system temp dir)")
    args = ap.parse_args(argv)
    defaults = dict(size_mib=(64, 1024), runs=(3, 5), bundle_mib=(8, 100),
                    small_files=(100, 300), bundle_runs=(2, 3), startup_runs=(5, 20))
    for key, (quick, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    args.importtime_runs = 1 if args.quick else 3
    for key in ("size_mib", "runs", "bundle_mib", "bundle_runs", "startup_runs"):
        if getattr(args, key) < 1:
            ap.error(f"--{key.replace('_', '-')} must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sections = args.only or list(SECTIONS)
    # SIGTERM unwinds like Ctrl-C, so the temp dir is removed in every case.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _project()
    print_header(args)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hotrelease-bench-", dir=args.tmpdir) as td:
        tmp = Path(td)
        need = (args.size_mib * 1.25 + args.bundle_mib * 2.2) * MiB
        free = shutil.disk_usage(tmp).free
        if free < need * 1.1:
            print(f"not enough space in {tmp}: need ~{need / MiB:.0f} MiB, "
                  f"have {free / MiB:.0f} MiB", file=sys.stderr)
            return 2
        if "checksum" in sections:
            bench_checksum(tmp, args)
        if "bundle" in sections:
            bench_bundle(tmp, args)
    if "startup" in sections:
        bench_startup(args)
    print(f"\n(total {time.perf_counter() - started:.1f} s; load avg at end {load()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
