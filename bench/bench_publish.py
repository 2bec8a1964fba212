"""Publish benchmark (issue 5): `hotrelease publish` to N local agents vs parallel `curl`.

    python bench/bench_publish.py [--agents 50] [--mib 20] [--concurrency 16]
                                  [--sweep 4,8,32] [--sizes 5,80] [--rounds 3]
                                  [--extra-rounds 2] [--quick]

Starts N `hotrelease agent serve` processes on free 127.0.0.1 ports (one plugin slot, no
reload or health hook: activation is the symlink swap), builds the example Python plugin
padded to the bundle size with an incompressible file (`hotrelease build`, `keygen`, `sign`,
all as real CLI subprocesses) in a temp git repository whose hotrelease.toml lists the agents
as nodes, with one stage (`all`, 100%, no bake), an always-open window and no approval.

Each round does, on the same agents, in alternating order:

* baseline: `xargs -P C curl -T bundle ...` PUTs of another build of the same size (next
  version, same padding bytes, only the stamped version differs) to every agent; the version
  is new to every agent, so each does the full ingest (receive, verify, extract, store) - an
  upload of an already-stored version would only be hashed. Then, timed separately, the same
  `xargs -P C curl` POSTs /activate (so "curl upload + activate" is the same agent work as a
  publish, minus the publisher's own reads).
* `hotrelease publish MANIFEST --all-stages` of a fresh version under `/usr/bin/time -f %M`
  (peak RSS of the publishing process), stderr progress lines timestamped as they arrive.

Old releases (neither current nor previous) are deleted from the agents' data dirs between
rounds so disk use stays flat. Prints one table. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NODE_RESULT = re.compile(r"\bnode-\d+: ")
TOKEN = "bench-token-0123456789abcdef"
MIB = 1024 * 1024
PLUGIN = "greeter"

# Written into the temp plugin repo; run by `hotrelease build` after build.py (no shell, so a
# script rather than `python3 -c`: the build formats {placeholders} in every argument).
PAD_SCRIPT = '''\
"""Pad the build output with an incompressible file (same bytes for every version)."""
import random, sys
from pathlib import Path
out, size = Path(sys.argv[1]), int(sys.argv[2])
rng = random.Random(20261124)
with open(out / "blob.bin", "wb") as fh:
    while size > 0:
        n = min(size, 4 << 20)
        fh.write(rng.randbytes(n))
        size -= n
'''

ALWAYS_OPEN = '''
[[windows]]
name = "always"
days = ["mon-sun"]
start = "00:00"
duration = "1d"
timezone = "UTC"
'''


def log(msg: str) -> None:
    print(f"# {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def cli_argv() -> list[str]:
    """The console script next to this interpreter (what a user runs), else `-m`."""
    script = Path(sys.executable).parent / "hotrelease"
    return [str(script)] if script.exists() else [sys.executable, "-m", "hotrelease"]


def git_env() -> dict[str, str]:
    return {**os.environ, "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "b@example.com",
            "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "b@example.com"}


def run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}\n"
                         f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port


def force_rmtree(path: Path) -> None:
    """rmtree that also works on the agents' read-only release trees."""
    if not path.exists():
        return
    for dirpath, _, _ in os.walk(path):
        try:
            os.chmod(dirpath, 0o755)
        except OSError:
            pass
    shutil.rmtree(path, ignore_errors=True)


# --- agents -------------------------------------------------------------------------------


@dataclass
class Agent:
    name: str
    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data(self) -> Path:
        return self.root / "data"


@dataclass
class Fleet:
    agents: list[Agent] = field(default_factory=list)

    def start(self, work: Path, count: int, release_pub: Path) -> None:
        from hotrelease.agent.auth import hash_token

        taken: set[int] = set()
        for i in range(count):
            root = work / "agents" / f"node-{i:02d}"
            root.mkdir(parents=True)
            agent = Agent(f"node-{i:02d}", root, free_port(taken))
            (root / "agent.toml").write_text(
                f'[agent]\ndata_dir = "{agent.data}"\nlisten = "127.0.0.1"\n'
                f"port = {agent.port}\nmax_upload_bytes = {4 * 1024 * MIB}\n\n"
                f'[trust]\nrelease_keys = ["{release_pub}"]\nthreshold = 1\n\n'
                f'[[tokens]]\nname = "ci"\nsha256 = "{hash_token(TOKEN)}"\n\n'
                f"[plugins.{PLUGIN}]\n")
            self.agents.append(agent)
        env = {k: v for k, v in os.environ.items() if k != "HOTRELEASE_AGENT_CRASH_AT"}
        for agent in self.agents:  # all at once; each imports FastAPI etc. on its own
            agent.proc = subprocess.Popen(
                [*cli_argv(), "agent", "serve", "--config", str(agent.root / "agent.toml")],
                env=env, stdout=subprocess.DEVNULL,
                stderr=open(agent.root / "agent.log", "ab"),  # noqa: SIM115
                start_new_session=True)  # Ctrl-C reaches us only; we kill them in `stop`
        deadline = time.monotonic() + 60 + count
        waiting = list(self.agents)
        while waiting:
            if time.monotonic() > deadline:
                raise SystemExit(f"{len(waiting)} agent(s) not up after the deadline, e.g. "
                                 f"{waiting[0].url}: {self.tail(waiting[0])}")
            still = []
            for agent in waiting:
                assert agent.proc is not None
                if agent.proc.poll() is not None:
                    raise SystemExit(f"agent {agent.name} exited with {agent.proc.returncode}:"
                                     f" {self.tail(agent)}")
                try:
                    with urllib.request.urlopen(f"{agent.url}/v1/health", timeout=1) as resp:
                        if resp.status != 200:
                            still.append(agent)
                except OSError:
                    still.append(agent)
            waiting = still
            if waiting:
                time.sleep(0.1)

    @staticmethod
    def tail(agent: Agent) -> str:
        path = agent.root / "agent.log"
        return path.read_text(errors="replace")[-1500:] if path.exists() else ""

    def stop(self) -> None:
        for agent in self.agents:
            if agent.proc is not None and agent.proc.poll() is None:
                agent.proc.send_signal(signal.SIGKILL)
        for agent in self.agents:
            if agent.proc is not None:
                try:
                    agent.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
                agent.proc = None

    def rss_mib(self) -> list[float]:
        out = []
        for agent in self.agents:
            if agent.proc is None:
                continue
            for line in Path(f"/proc/{agent.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out.append(int(line.split()[1]) / 1024)
        return out

    def prune(self) -> None:
        """Delete stored releases that are neither current nor previous (flat disk use)."""
        for agent in self.agents:
            releases = agent.data / "releases" / PLUGIN
            state_file = agent.data / "plugins" / PLUGIN / "state.json"
            keep = set()
            if state_file.exists():
                state = json.loads(state_file.read_text())
                keep = {state.get("current"), state.get("previous")}
            if releases.is_dir():
                for path in releases.iterdir():
                    if path.name not in keep:
                        force_rmtree(path)


# --- the release --------------------------------------------------------------------------


@dataclass
class Release:
    version: str
    manifest: Path
    signature: Path
    bundle: Path


class Project:
    """A temp git repo: the example plugin + padding script + the fleet config."""

    def __init__(self, work: Path, fleet: Fleet, key: Path, pub: Path) -> None:
        self.path = work / "greeter"
        self.out = work / "out"
        self.fleet = fleet
        self.key, self.pub = key, pub
        self.counter = 0
        shutil.copytree(REPO / "examples" / "python-plugin", self.path,
                        ignore=shutil.ignore_patterns("dist", "__pycache__"))
        (self.path / "pad.py").write_text(PAD_SCRIPT)
        (self.path / ".gitignore").write_text("dist/\n__pycache__/\n")
        self.base = (self.path / "hotrelease.toml").read_text()
        run(["git", "init", "-q", "-b", "main", str(self.path)])
        self.settings: tuple[float, int] | None = None

    def configure(self, mib: float, concurrency: int) -> None:
        if self.settings == (mib, concurrency):
            return
        pad = int(mib * MIB)
        text = self.base.replace(
            'commands = ["python3 build.py --version {version} --out {out}"]',
            'commands = ["python3 build.py --version {version} --out {out}", '
            f'"python3 pad.py {{out}} {pad}"]')
        if text == self.base:
            raise SystemExit("examples/python-plugin/hotrelease.toml changed: cannot add the "
                             "padding command")
        nodes = "".join(f'\n[[nodes]]\nname = "{a.name}"\nurl = "{a.url}"\n'
                        for a in self.fleet.agents)
        text += (f'\n[trust]\nrelease_keys = ["{self.pub}"]\n{ALWAYS_OPEN}\n'
                 "[policy]\napproval_classes = []\n\n"
                 f"[rollout]\nconcurrency = {concurrency}\n\n"
                 '[[rollout.scheduled]]\nname = "all"\npercent = 100\nbake_seconds = 0\n\n'
                 '[[rollout.urgent]]\nname = "all"\npercent = 100\nbake_seconds = 0\n'
                 f"{nodes}")
        (self.path / "hotrelease.toml").write_text(text)
        run(["git", "add", "-A"], cwd=self.path, env=git_env())
        run(["git", "commit", "-q", "--allow-empty", "-m", f"bench {mib} MiB c={concurrency}"],
            cwd=self.path, env=git_env())
        self.settings = (mib, concurrency)

    def build(self) -> Release:
        version = f"1.0.{self.counter}"
        self.counter += 1
        out = self.out / version
        proc = run([*cli_argv(), "build", "--version", version, "--out", str(out), "--json"],
                   cwd=self.path, env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
        doc = json.loads(proc.stdout)
        manifest = Path(doc.get("manifest") or doc.get("manifest_path") or
                        next(iter(out.glob("*.manifest.json"))))
        run([*cli_argv(), "sign", str(manifest), "--key", str(self.key)], cwd=self.path)
        data = json.loads(manifest.read_text())
        return Release(version, manifest, Path(f"{manifest}.sig"),
                       manifest.parent / data["bundle"]["filename"])


# --- the two contenders -------------------------------------------------------------------


def xargs_curl(urls: list[str], concurrency: int, curl_args: list[str]) -> tuple[float, list[str]]:
    """`xargs -P C -I{} curl ... {}` over the URLs; returns wall seconds and HTTP codes."""
    argv = ["xargs", "-P", str(concurrency), "-I{}", "curl", "-sS", "-o", "/dev/null",
            "-w", "%{http_code}\\n", *curl_args, "{}"]
    start = time.perf_counter()
    proc = subprocess.run(argv, input="\n".join(urls) + "\n", capture_output=True, text=True,
                          timeout=1800)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"xargs curl failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall, proc.stdout.split()


def curl_round(fleet: Fleet, release: Release, concurrency: int) -> dict[str, float]:
    headers = ["-H", "Expect:", "-H", f"Authorization: Bearer {TOKEN}",
               "-H", "Content-Type: application/octet-stream",
               "-H", "X-Hotrelease-Manifest: "
               + base64.b64encode(release.manifest.read_bytes()).decode(),
               "-H", "X-Hotrelease-Signature: "
               + base64.b64encode(release.signature.read_bytes()).decode()]
    subprocess.run(["sync"], check=True)
    urls = [f"{a.url}/v1/plugins/{PLUGIN}/releases/{release.version}" for a in fleet.agents]
    upload, codes = xargs_curl(urls, concurrency, ["-T", str(release.bundle), *headers])
    if codes != ["201"] * len(urls):
        raise SystemExit(f"curl uploads: expected 201 from every agent, got {codes}")
    body = json.dumps({"version": release.version, "stage": "all"})
    urls = [f"{a.url}/v1/plugins/{PLUGIN}/activate" for a in fleet.agents]
    activate, codes = xargs_curl(urls, concurrency, [
        "-X", "POST", "-H", f"Authorization: Bearer {TOKEN}",
        "-H", "Content-Type: application/json", "-d", body])
    if codes != ["200"] * len(urls):
        raise SystemExit(f"curl activations: expected 200 from every agent, got {codes}")
    return {"curl_upload": upload, "curl_activate": activate}


def publish_round(project: Project, release: Release, *, dry_run: bool = False
                  ) -> dict[str, float]:
    """`hotrelease publish MANIFEST --all-stages` under GNU time; phases from stderr."""
    rss_file = project.out / "rss.txt"
    env = {**os.environ, "HOTRELEASE_AGENT_TOKEN": TOKEN, "CI": "true"}
    args = ["--dry-run"] if dry_run else []
    argv = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *cli_argv(), "publish",
            str(release.manifest), "--all-stages", *args]
    if not dry_run:
        subprocess.run(["sync"], check=True)
    lines: list[tuple[float, str]] = []
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=project.path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.perf_counter() - start, line.rstrip("\n")))

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    code = proc.wait(timeout=1800)
    wall = time.perf_counter() - start
    reader.join(timeout=10)
    if code != 0 or (not dry_run and "rollout complete" not in stdout):
        text = "\n".join(line for _, line in lines)
        raise SystemExit(f"publish failed ({code}):\n{stdout[-2000:]}\n{text[-3000:]}")
    rss = int(rss_file.read_text().split()[-1]) / 1024
    result = {"wall": wall, "rss": rss}
    if dry_run:
        return result
    # Progress lines from the worker threads can share a line (print is not atomic across
    # threads), so count node results by pattern, not by line.
    nodes = [t for t, line in lines for _ in NODE_RESULT.finditer(line)]
    stage_start = next((t for t, line in lines if "node(s)" in line), None)
    done = next((t for t, line in lines if line.endswith("stage all: done")), None)
    if stage_start is None or done is None or len(nodes) != len(project.fleet.agents):
        raise SystemExit("unexpected progress output:\n" + "\n".join(ln for _, ln in lines))
    result.update(before=stage_start, nodes=max(nodes) - stage_start,
                  first_node=min(nodes) - stage_start, bake=done - max(nodes),
                  after=wall - done)
    return result


# --- the benchmark ------------------------------------------------------------------------


def one_round(project: Project, mib: float, concurrency: int, index: int) -> dict[str, float]:
    project.configure(mib, concurrency)
    order = ("publish", "curl") if index % 2 else ("curl", "publish")  # alternate who's first
    result: dict[str, float] = {}
    for who in order:
        release = project.build()  # a new version for each: the later one is always higher
        result["bundle_mib"] = release.bundle.stat().st_size / MIB
        if who == "curl":
            result.update(curl_round(project.fleet, release, concurrency))
        else:
            result.update(publish_round(project, release))
        project.fleet.prune()
        shutil.rmtree(release.manifest.parent, ignore_errors=True)
    return result


def median_of(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--mib", type=float, default=20, help="bundle size (main rows)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="publish concurrency and curl -P for the main rows")
    parser.add_argument("--sweep", default="4,8,32",
                        help="other concurrencies, one round each ('' for none)")
    parser.add_argument("--sizes", default="5,80",
                        help="other bundle sizes in MiB for the RSS rows, one round each")
    parser.add_argument("--rounds", type=int, default=3, help="main rounds (medians)")
    parser.add_argument("--extra-rounds", type=int, default=2,
                        help="rounds per --sweep / --sizes entry (medians; order alternates)")
    parser.add_argument("--quick", action="store_true", help="5 agents, 2 MiB: a smoke run")
    parser.add_argument("--tmp", default=None, help="work dir parent (default: system temp)")
    args = parser.parse_args()
    if args.quick:
        args.agents, args.mib, args.rounds, args.sweep, args.sizes = 5, 2, 1, "4", "1,4"
        args.extra_rounds = 1
    for tool in ("curl", "xargs", "git"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required")
    if not os.access("/usr/bin/time", os.X_OK):
        raise SystemExit("GNU time (/usr/bin/time) is required for the peak RSS")
    sweep = [int(c) for c in args.sweep.split(",") if c.strip()]
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]

    work = Path(tempfile.mkdtemp(prefix="hotrelease-bench-publish-", dir=args.tmp))
    fleet = Fleet()
    # SIGTERM -> SystemExit, so `finally` kills the agents (Ctrl-C is KeyboardInterrupt).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        keys = work / "keys"
        keys.mkdir()
        run([*cli_argv(), "keygen", "--out", str(keys / "release")])
        key, pub = keys / "release.key", keys / "release.pub"
        log(f"starting {args.agents} agents")
        t0 = time.perf_counter()
        fleet.start(work, args.agents, pub)
        start_s = time.perf_counter() - t0
        log(f"agents up in {start_s:.1f}s")
        project = Project(work, fleet, key, pub)

        main_rounds = []
        for i in range(args.rounds):
            log(f"main round {i + 1}/{args.rounds}: {args.mib:g} MiB, c={args.concurrency}")
            main_rounds.append(one_round(project, args.mib, args.concurrency, i))
        main_res = median_of(main_rounds)
        dry = publish_round(project, project.build(), dry_run=True)

        sweep_res = {}
        for c in sweep:
            log(f"sweep: c={c}")
            sweep_res[c] = median_of([one_round(project, args.mib, c, i)
                                      for i in range(args.extra_rounds)])
        size_res = {}
        for s in sizes:
            log(f"size: {s:g} MiB")
            size_res[s] = median_of([one_round(project, s, args.concurrency, i)
                                     for i in range(args.extra_rounds)])
        agent_rss = fleet.rss_mib()
    finally:
        fleet.stop()
        force_rmtree(work)

    load = os.getloadavg()
    n, c = args.agents, args.concurrency
    rows: list[tuple[str, str, str]] = []

    def ratio_note(res: dict[str, float]) -> str:
        r = res["wall"] / res["curl_upload"]
        both = res["curl_upload"] + res["curl_activate"]
        return (f"{r:.2f}x curl upload ({'ok' if r <= 1.3 else 'MISSED'}: goal <= 1.3x); "
                f"{res['wall'] / both:.2f}x curl upload+activate")

    mib = main_res["bundle_mib"]
    rows += [
        ("agents / bundle / rounds", f"{n} x {mib:.1f} MiB x {args.rounds}",
         f"agents started in parallel, all up in {start_s:.1f}s; medians (sweep and sizes: "
         f"{args.extra_rounds} round(s) each)"),
        (f"curl -T, xargs -P {c}: upload", f"{main_res['curl_upload']:.2f} s",
         f"{n * mib / main_res['curl_upload']:.0f} MiB/s aggregate; fresh version per round"),
        (f"curl POST activate, xargs -P {c}", f"{main_res['curl_activate']:.2f} s",
         "after all uploads"),
        (f"hotrelease publish --all-stages, c={c}", f"{main_res['wall']:.2f} s",
         ratio_note(main_res)),
        ("  per round: publish / curl upload",
         ", ".join(f"{r['wall'] / r['curl_upload']:.2f}x" for r in main_rounds),
         "order alternates: curl first in rounds 1, 3, ..."),
        ("  start, verify, classify, read state", f"{main_res['before']:.2f} s",
         "process start -> 'stage all' line"),
        ("  upload + activate, all nodes", f"{main_res['nodes']:.2f} s",
         f"first node done after {main_res['first_node']:.2f} s"),
        ("  bake check (bake_seconds = 0)", f"{main_res['bake']:.2f} s",
         "last node -> 'stage all: done'"),
        ("  read state, report, exit", f"{main_res['after']:.2f} s", ""),
        ("publish --dry-run (no upload)", f"{dry['wall']:.2f} s",
         f"peak RSS {dry['rss']:.0f} MiB: start + verify + classify + read state"),
    ]
    for cc, res in sweep_res.items():
        rows.append((f"concurrency {cc}: curl upload / publish",  # medians of extra-rounds
                     f"{res['curl_upload']:.2f} / {res['wall']:.2f} s", ratio_note(res)))
    rows.append((f"publish peak RSS, {mib:.0f} MiB bundle", f"{main_res['rss']:.0f} MiB",
                 f"max of rounds {max(r['rss'] for r in main_rounds):.0f} MiB; "
                 f"{'ok' if main_res['rss'] < 150 else 'MISSED'}: goal < 150"))
    for _size, res in sorted(size_res.items()):
        rows.append((f"publish peak RSS, {res['bundle_mib']:.0f} MiB bundle",
                     f"{res['rss']:.0f} MiB",
                     f"{'ok' if res['rss'] < 150 else 'MISSED'}: goal < 150; wall "
                     f"{res['wall']:.2f} s = {ratio_note(res)}"))
    if agent_rss:
        rows.append(("agent peak RSS (max / median)",
                     f"{max(agent_rss):.0f} / {statistics.median(agent_rss):.0f} MiB",
                     "VmHWM of the agent processes, whole run"))

    print(f"hotrelease publish vs parallel curl: {n} agents on 127.0.0.1, {os.cpu_count()} "
          f"CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print()
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"| {'measure':<{width}} | {'value':>{vwidth}} | note |")
    print(f"|{'-' * (width + 2)}|{'-' * (vwidth + 1)}:|------|")
    for name, value, note in rows:
        print(f"| {name:<{width}} | {value:>{vwidth}} | {note} |")


if __name__ == "__main__":
    main()
