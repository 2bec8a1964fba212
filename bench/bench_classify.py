"""Benchmark: `hotrelease classify` end to end on a repository with 10,000 tags.

Builds a throw-away repository with one commit and N lightweight tags (written in one
`git update-ref --stdin` transaction: loose refs), measures, then packs them
(`git pack-refs --all`) and measures again. Each row compares the median wall time of
`hotrelease classify` (a fresh process, as CI runs it) with `git tag --list` on the same
repository in the same run, plus `hotrelease --help` as the interpreter start-up floor.

Bytecode: an installed package has its `.pyc` files. Where PYTHONDONTWRITEBYTECODE is set
(this sandbox), a source checkout would be recompiled on every run, so the measured commands
get a private PYTHONPYCACHEPREFIX in the temp dir (the work tree is not touched) and the
warm-up run fills it. `--no-bytecode-cache` measures the recompiling case instead.

    python bench/bench_classify.py [--tags 10000] [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import semver

GOAL_MS = 300.0
ENV = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@example.com",
       "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "b@example.com"}


def git(repo: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["git", *args], cwd=repo, env=ENV, input=stdin, check=True,
                          capture_output=True, text=True).stdout.strip()


def tag_names(count: int) -> list[str]:
    """Mostly releases, some prereleases and some non-version tags, like a real repo."""
    names = []
    for i in range(count):
        major, minor, patch = i // 2000, (i // 40) % 50, i % 40
        if i % 50 == 7:
            names.append(f"v{major}.{minor}.{patch}-rc.{i % 3}")
        elif i % 97 == 3:
            names.append(f"deploy-{i}")
        else:
            names.append(f"v{major}.{minor}.{patch}")
    return names


def make_repo(root: Path, count: int) -> tuple[Path, str, str]:
    repo = root / "many-tags"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "commit", "-q", "--allow-empty", "-m", "root")
    sha = git(repo, "rev-parse", "HEAD")
    names = tag_names(count - 1)
    git(repo, "update-ref", "--stdin",
        stdin="".join(f"create refs/tags/{name} {sha}\n" for name in names))
    # The candidate, tagged as CI sees it: annotated, with a security trailer to read. It is
    # far above the other tags, so every tag is a baseline candidate and gets scanned.
    git(repo, "tag", "-a", "v99.0.1", "-m", "v99.0.1\n\nSecurity-Advisory: CVE-2026-1234")
    releases = [semver.Version.parse(n[1:]) for n in names if n.startswith("v") and "-" not in n]
    return repo, "99.0.1", str(max(releases))


RUN_ENV = dict(os.environ)


def median_ms(cmd: list[str], cwd: Path, runs: int) -> float:
    subprocess.run(cmd, cwd=cwd, env=RUN_ENV, capture_output=True, check=True)  # warm caches
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, env=RUN_ENV, capture_output=True, check=True)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def measure(repo: Path, candidate: str, baseline: str, runs: int, script: str | None
            ) -> dict[str, float]:
    module = [sys.executable, "-m", "hotrelease"]
    args = ["classify", "--name", "bench", "--version", candidate,
            "--now", "2026-11-24T12:00:00Z", "--json"]
    out = subprocess.run([*module, *args], cwd=repo, env=RUN_ENV, capture_output=True,
                         text=True, check=True).stdout
    # Sanity: the right baseline was found and the candidate tag's trailer was read.
    assert f'"baseline": "{baseline}"' in out and "CVE-2026-1234" in out, out
    result = {"git tag --list": median_ms(["git", "tag", "--list"], repo, runs),
              "hotrelease --help": median_ms([*module, "--help"], repo, runs),
              "classify (python -m)": median_ms([*module, *args], repo, runs)}
    if script:
        result["classify (hotrelease)"] = median_ms([script, *args], repo, runs)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="Keep PYTHONDONTWRITEBYTECODE as set (recompile every run).")
    args = parser.parse_args()
    # CI jobs run the console script; `python -m hotrelease` is measured too for reference.
    # Prefer the script next to this interpreter: a version-manager shim on PATH (pyenv)
    # would add its own start-up to every run.
    beside = Path(sys.executable).parent / "hotrelease"
    script = str(beside) if beside.is_file() else shutil.which("hotrelease")
    with tempfile.TemporaryDirectory(prefix="hr-bench-") as tmp:
        if not args.no_bytecode_cache:
            RUN_ENV.pop("PYTHONDONTWRITEBYTECODE", None)
            RUN_ENV["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        repo, candidate, baseline = make_repo(Path(tmp), args.tags)
        loose = len(list((repo / ".git" / "refs" / "tags").iterdir()))
        rows = [("loose", loose, measure(repo, candidate, baseline, args.runs, script))]
        git(repo, "pack-refs", "--all")
        packed_left = len(list((repo / ".git" / "refs" / "tags").iterdir()))
        rows.append(("packed", args.tags - packed_left,
                     measure(repo, candidate, baseline, args.runs, script)))
    goal_key = "classify (hotrelease)" if script else "classify (python -m)"
    columns = list(rows[0][2])
    cache = "recompiled each run" if args.no_bytecode_cache else "cached"
    print(f"classify on {args.tags} tags, median of {args.runs} runs (ms), bytecode {cache}; "
          f"goal: {goal_key} < {GOAL_MS:.0f}")
    print(f"{'refs':<7} {'count':>6} " + " ".join(f"{c:>22}" for c in columns) + "   goal")
    ok = True
    for kind, n, m in rows:
        met = m[goal_key] < GOAL_MS
        ok &= met
        print(f"{kind:<7} {n:>6} " + " ".join(f"{m[c]:>22.1f}" for c in columns)
              + f"   {'ok' if met else 'MISS'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
