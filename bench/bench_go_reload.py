"""Benchmark: hot reload of the example Go game server (examples/go-host) under load.

Builds the host and N+1 versions of the example plugin with `hotrelease build`, starts the host
on the first, keeps client threads playing over persistent connections, then for each next
version does what the node agent does (swap `current` atomically, send SIGHUP) and measures:

- swap latency: from the reload signal to the first response served by the new version,
  as a probe client sees it (and the host's own check/open/swap time from /health);
- requests failed and reconnects during all the swaps;
- the host's RSS after each version: Go never unloads a plugin, so it only grows.

Usage:  python bench/bench_go_reload.py [--versions 20] [--clients 8]
Needs Go (with cgo) on PATH; everything lives in a temp dir and every process is stopped.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import gohelpers as gh  # noqa: E402


class Clients:
    def __init__(self, host: gh.HostProcess, count: int) -> None:
        self.host = host
        self.stop = threading.Event()
        self.ok = [0] * count
        self.failed = [0] * count
        self.reconnects = [0] * count
        self.threads = [threading.Thread(target=self.play, args=(i,), daemon=True)
                        for i in range(count)]

    def play(self, i: int) -> None:
        conn = self.host.connection()
        sock = None
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                status, _ = gh.call(conn, "POST", "/play",
                                    {"session": f"bench-{i}", "action": "hit", "amount": 1})
            except Exception:  # noqa: BLE001 - every failure counts
                self.failed[i] += 1
                conn.close()
                continue
            if sock is not None and conn.sock is not sock:
                self.reconnects[i] += 1
            sock = conn.sock
            if status == 200:
                self.ok[i] += 1
            else:
                self.failed[i] += 1
        conn.close()

    def __enter__(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", type=int, default=20, help="successive new versions to swap in")
    ap.add_argument("--clients", type=int, default=8, help="client threads playing meanwhile")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-go-reload-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        host_bin = gh.build_host(root / "gamehost")
        src = gh.copy_sources(root / "src")
        versions = [f"1.{minor}.0" for minor in range(args.versions + 1)]
        dirs = {}
        for v in versions:
            dirs[v] = gh.install_release(gh.hotrelease_build(src, v, root / "dist"),
                                         root / "releases")
        build_s = time.perf_counter() - t
        so_size = (dirs[versions[0]] / "files" / "arena.so").stat().st_size

        current = gh.activate(root / "releases", dirs[versions[0]])
        host = gh.start_host(host_bin, current, root / "host", "-restart-after", "0")
        try:
            probe = host.connection()
            latencies: list[float] = []
            host_total: list[float] = []
            host_check: list[float] = []
            host_open: list[float] = []
            rss: list[int] = []
            with Clients(host, args.clients) as clients:
                time.sleep(0.5)  # warm up
                rss.append(gh.rss_kib(host.proc.pid))
                for v in versions[1:]:
                    gh.activate(root / "releases", dirs[v])
                    t0 = time.perf_counter()
                    host.sighup()
                    deadline = t0 + 10
                    while time.perf_counter() < deadline:
                        _, body = gh.call(probe, "POST", "/play",
                                          {"session": "probe", "action": "hit", "amount": 0})
                        if body.get("version") == v:
                            latencies.append((time.perf_counter() - t0) * 1000)
                            break
                    else:
                        raise SystemExit(f"version {v} never served")
                    last = host.health()[1]["last_reload"]
                    host_total.append(last["total_ms"])
                    host_check.append(last["abi_check_ms"])
                    host_open.append(last["open_ms"])
                    time.sleep(0.25)  # let the load run on the new version
                    rss.append(gh.rss_kib(host.proc.pid))
                # a rollback to a version this process already loaded
                gh.activate(root / "releases", dirs[versions[-2]])
                t0 = time.perf_counter()
                host.sighup()
                while True:
                    _, body = gh.call(probe, "POST", "/play",
                                      {"session": "probe", "action": "hit", "amount": 0})
                    if body.get("version") == versions[-2]:
                        rollback_ms = (time.perf_counter() - t0) * 1000
                        break
                    if time.perf_counter() - t0 > 10:
                        raise SystemExit("rollback never served")
                rollback_host_ms = host.health()[1]["last_reload"]["total_ms"]
                time.sleep(0.25)
                rss_after_rollback = gh.rss_kib(host.proc.pid)
            probe.close()
            health = host.health()[1]
        finally:
            host.stop()

    ok, failed, reconnects = sum(clients.ok), sum(clients.failed), sum(clients.reconnects)
    growth = [(b - a) / 1024 for a, b in zip(rss, rss[1:], strict=False)]
    total_growth = (rss[-1] - rss[0]) / 1024
    rows = [
        ("swaps (new versions)", f"{len(latencies)}"),
        ("swap latency, signal -> new handler serving, median",
         f"{statistics.median(latencies):.2f} ms"),
        ("swap latency, p95", f"{pct(latencies, 95):.2f} ms"),
        ("swap latency, max", f"{max(latencies):.2f} ms"),
        ("  in host: ABI check (manifest + ELF), median",
         f"{statistics.median(host_check):.2f} ms"),
        ("  in host: plugin.Open + lookup + swap, median",
         f"{statistics.median(host_open):.2f} ms"),
        ("  in host: total, median / p95",
         f"{statistics.median(host_total):.2f} / {pct(host_total, 95):.2f} ms"),
        ("rollback to an already loaded version", f"{rollback_ms:.2f} ms "
                                                  f"(host {rollback_host_ms:.2f} ms)"),
        ("client threads / requests served", f"{args.clients} / {ok}"),
        ("requests failed during swaps", f"{failed}"),
        ("reconnects", f"{reconnects}"),
        ("plugin .so size", f"{so_size / 1048576:.2f} MiB"),
        ("host RSS before first swap", f"{rss[0] / 1024:.1f} MiB"),
        (f"host RSS after {len(latencies)} versions", f"{rss[-1] / 1024:.1f} MiB"),
        ("RSS growth per version, mean / median",
         f"{total_growth / len(latencies):.2f} / {statistics.median(growth):.2f} MiB"),
        ("RSS change from the rollback", f"{(rss_after_rollback - rss[-1]) / 1024:+.2f} MiB"),
        ("plugins mapped in the process", f"{health['plugins_mapped']}"),
        ("build (host + plugins)", f"{build_s:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"{'metric':<{width}}  value")
    print(f"{'-' * width}  {'-' * 24}")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print()
    print("RSS after each version (MiB): "
          + " ".join(f"{kib / 1024:.1f}" for kib in rss))
    per = total_growth / len(latencies)
    if per > 0:
        print(f"Go never unloads a plugin: at ~{per:.1f} MiB per version, a memory budget of B "
              f"MiB for plugin growth allows about B/{per:.1f} versions before a restart "
              f"(the host flags restart_recommended on /health after -restart-after versions).")
    return 1 if failed or reconnects else 0


if __name__ == "__main__":
    raise SystemExit(main())
