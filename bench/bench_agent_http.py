"""Agent HTTP bounds under hostile connections (issue 11 item 5).

    python bench/bench_agent_http.py [--idle 1000] [--tricklers 10] [--quick]

One agent on 127.0.0.1 with the default [agent] limits (--quick: header_timeout and
body_timeout of 3 s instead of 30 s). In the same run: a publish to that agent on a quiet
agent (the baseline), then the same publish while --idle connections that send nothing and
--tricklers clients sending one byte a second (half trickle a request head, half an upload
body) are open; how long the agent held each; the excess over max_connections; a 32 MiB
header without a token. "publish" is what `hotrelease publish` does on each node: an
AgentClient upload and activation. Prints one table. Not a test: numbers depend on the
machine; a missed bound prints MISSED.
"""

from __future__ import annotations

import argparse
import base64
import json
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import (  # noqa: E402
    REPO,
    TOKEN,
    drop,
    free_port,
    make_release,
    peak_rss_mib,
    wait_http,
)

sys.path.insert(0, str(REPO))


def raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return int(soft)


def start_agent(work: Path, pub: Path, limits: str) -> tuple[subprocess.Popen, str, Path]:
    from hotrelease.agent.auth import hash_token

    port = free_port()
    data = work / "data"
    cfg = work / "agent.toml"
    cfg.write_text(f'[agent]\ndata_dir = "{data}"\nport = {port}\n{limits}'
                   f'[trust]\nrelease_keys = ["{pub}"]\n'
                   f'[[tokens]]\nname = "bench"\nsha256 = "{hash_token(TOKEN)}"\n'
                   "[plugins.greeter]\n")
    log = open(work / "agent.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "hotrelease", "agent", "serve", "--config",
                             str(cfg)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v1/health")
    return proc, url, data


def publish(url: str, release: tuple[Path, Path, Path], version: str) -> tuple[float, str]:
    from hotrelease.agent.client import AgentClient

    manifest, sig, bundle = release
    client = AgentClient(url, TOKEN, timeout=60, upload_timeout=120)
    start = time.perf_counter()
    stored = client.upload(manifest, sig, bundle)["status"]
    result = client.activate("greeter", version)["result"]
    return time.perf_counter() - start, f"{stored}, {result}"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def read_answer(sock: socket.socket, deadline: float) -> tuple[str, float]:
    """Wait (bounded) for the agent to answer or close: ('408 body_timeout', t), ('closed',
    t), ('reset', t) or ('open', t); t = the monotonic time it happened. Sockets past
    FD_SETSIZE cannot use select(): this uses socket timeouts."""
    got = b""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:
            return "reset", time.monotonic()
        if not chunk:
            return "closed", time.monotonic()
        got += chunk
        head, sep, body = got.partition(b"\r\n\r\n")
        if sep:
            status = head.split(b" ", 2)[1].decode()
            try:
                code = json.loads(body)["error"]["code"]
            except (ValueError, KeyError, TypeError):
                continue  # body not complete yet
            return f"{status} {code}", time.monotonic()
    return "open", time.monotonic()


class Trickler(threading.Thread):
    """Sends `head`, then `drip` one byte a second until the agent answers or closes."""

    def __init__(self, port: int, head: bytes, drip: bytes, give_up: float) -> None:
        super().__init__(daemon=True)
        self.port, self.head, self.drip, self.give_up = port, head, drip, give_up
        self.held = float("nan")
        self.answer = "not run"

    def run(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        start = time.monotonic()
        deadline = start + self.give_up
        try:
            sock.sendall(self.head)
            for i in range(len(self.drip)):
                answer, when = read_answer(sock, min(deadline, time.monotonic() + 1.0))
                if answer != "open" or when >= deadline:
                    break
                sock.send(self.drip[i:i + 1])
            self.answer, when = answer, when
            self.held = when - start
        except OSError as exc:
            self.answer, self.held = f"error {exc.errno}", time.monotonic() - start
        finally:
            sock.close()


def idle_connections(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]


def watch_closes(socks: list[socket.socket], start: float, give_up: float) -> list[float]:
    """Seconds from `start` until the agent closed each socket (nan: still open)."""
    closed: dict[socket.socket, float] = {}
    deadline = time.monotonic() + give_up
    with selectors.DefaultSelector() as sel:  # epoll: no FD_SETSIZE limit
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ)
        while len(closed) < len(socks) and time.monotonic() < deadline:
            for key, _ in sel.select(0.2):
                sock = cast(socket.socket, key.fileobj)  # registered above: a socket
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    closed[sock] = time.monotonic() - start
                    sel.unregister(sock)
    return [closed.get(s, float("nan")) for s in socks]


def excess(port: int, cap: int) -> tuple[int, int, float]:
    """Open cap + 10 connections that send nothing: how many the agent refused (503
    too_many_connections, answered at connect), how many it kept, and the time to that
    answer for one more connection while all are open."""
    socks = idle_connections(port, cap + 10)
    try:
        time.sleep(0.5)
        refused = 0
        for sock in socks:
            answer, _ = read_answer(sock, time.monotonic() + 0.001)
            refused += answer.startswith("503 too_many_connections")
        one = socket.create_connection(("127.0.0.1", port), timeout=10)
        start = time.monotonic()
        answer, when = read_answer(one, start + 2.0)
        one.close()
        latency = when - start if answer.startswith("503") else float("nan")
    finally:
        for sock in socks:
            sock.close()
    return refused, len(socks) - refused, latency


def big_header(port: int, mib: int) -> tuple[str, float]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    start = time.monotonic()
    try:
        try:
            sock.sendall(b"GET /v1/plugins HTTP/1.1\r\nHost: x\r\nX-Big: " +
                         b"a" * (mib * 1024 * 1024) + b"\r\n\r\n")
        except OSError:
            pass
        answer, when = read_answer(sock, start + 10)
    finally:
        sock.close()
    return answer, when - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=int, default=1000, help="idle connections")
    parser.add_argument("--tricklers", type=int, default=10)
    parser.add_argument("--quick", action="store_true",
                        help="header_timeout and body_timeout 3 s (default 30 s)")
    parser.add_argument("--tmp", default=None, help="work dir parent (default: system temp)")
    args = parser.parse_args()

    from hotrelease.agent.config import DEFAULT_HTTP_LIMITS as D
    from hotrelease.trust.keys import generate_keypair

    bound = 3.0 if args.quick else D.header_timeout
    limits = (f"header_timeout = {bound}\nbody_timeout = {bound}\n" if args.quick else "")
    fds = raise_fd_limit(args.idle + D.max_connections + args.tricklers + 256)
    work = Path(tempfile.mkdtemp(prefix="hotrelease-bench-http-", dir=args.tmp))
    proc = None
    try:
        generate_keypair(work / "release")
        key, pub = work / "release.key", work / "release.pub"
        src = (REPO / "examples" / "python-plugin" / "src")
        files: dict[str, Path | bytes] = {p.name: p for p in src.iterdir() if p.is_file()}
        releases = {v: make_release(work, key, "greeter", v, files)
                    for v in ("1.0.0", "1.0.1", "1.0.2")}
        proc, url, data = start_agent(work, pub, limits)
        port = port_of(url)
        rss0 = peak_rss_mib(proc.pid)
        quiet_s, quiet = publish(url, releases["1.0.0"], "1.0.0")

        # --- load: idle connections + tricklers, then a publish --------------------------
        start = time.monotonic()
        idle = idle_connections(port, args.idle)
        opened_s = time.monotonic() - start
        manifest, sig, bundle = releases["1.0.2"]
        upload_head = (
            "PUT /v1/plugins/greeter/releases/1.0.2 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {bundle.stat().st_size}\r\n"
            f"X-Hotrelease-Manifest: {base64.b64encode(manifest.read_bytes()).decode()}\r\n"
            f"X-Hotrelease-Signature: {base64.b64encode(sig.read_bytes()).decode()}\r\n\r\n"
        ).encode()
        body = bundle.read_bytes()
        give_up = bound * 3 + 10
        tricklers = []
        for i in range(args.tricklers):
            if i % 2:
                tricklers.append(Trickler(port, upload_head + body[:100], body[100:], give_up))
            else:
                tricklers.append(Trickler(port, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n",
                                          b"X-Slow: " + b"a" * 4096, give_up))
        for t in tricklers:
            t.start()
        time.sleep(0.2)
        health_t0 = time.perf_counter()
        import requests

        health = requests.get(f"{url}/v1/health", timeout=10).status_code
        health_ms = (time.perf_counter() - health_t0) * 1000
        loaded_s, loaded = publish(url, releases["1.0.1"], "1.0.1")
        during = time.monotonic() - start
        idle_closed = watch_closes(idle, start, D.keep_alive_timeout + 10)
        for t in tricklers:
            t.join(give_up + 5)
        for sock in idle:
            sock.close()
        leftovers = sorted(p.name for p in (data / "tmp").iterdir())
        history = [json.loads(line) for line in
                   (data / "plugins" / "greeter" / "history.jsonl").read_text().splitlines()]
        cut_records = sum(1 for r in history if r.get("code") == "body_timeout")

        # --- the excess over max_connections, then a 32 MiB header without a token --------
        cap = D.max_connections
        for line in (work / "agent.log").read_text().splitlines():
            if "lowered to" in line:
                cap = int(line.split("lowered to ")[1].split(":")[0])
        refused, kept, slowest = excess(port, cap)
        health_after, until = 0, time.monotonic() + 5  # the refused ones close at once,
        while health_after != 200 and time.monotonic() < until:  # the kept ones in a moment
            health_after = requests.get(f"{url}/v1/health", timeout=10).status_code
        rss1 = peak_rss_mib(proc.pid)
        big, big_s = big_header(port, 32)
        rss2 = peak_rss_mib(proc.pid)
    finally:
        if proc is not None:
            drop(proc)
        shutil.rmtree(work, ignore_errors=True)

    def bounded(held: list[float], limit: float) -> str:
        ok = all(h == h and h <= limit for h in held)
        return "" if ok else "  MISSED"

    heads = [t for i, t in enumerate(tricklers) if i % 2 == 0]
    bodies = [t for i, t in enumerate(tricklers) if i % 2]

    def held_range(ts: list) -> str:
        held = [t.held for t in ts]
        return (f"{min(held):.1f}-{max(held):.1f} s" if held else "-")

    def answers(ts: list) -> str:
        return ", ".join(sorted({t.answer for t in ts})) or "-"

    keep = D.keep_alive_timeout
    rows = [
        ("open-file limit (bench) / agent max_connections", f"{fds} / {cap}",
         f"bounds: keep_alive {keep:g} s, header {bound:g} s, body {bound:g} s per window"),
        ("publish on a quiet agent", f"{quiet_s * 1000:.0f} ms", quiet),
        (f"publish with {args.idle} idle + {args.tricklers} tricklers", f"{loaded_s * 1000:.0f} ms",
         f"{loaded}; {loaded_s / quiet_s:.2f}x quiet"
         + ("" if loaded == "stored, activated" else "  MISSED")),
        ("  /v1/health under that load", f"{health_ms:.0f} ms", f"HTTP {health}"
         + ("" if health == 200 else "  MISSED")),
        (f"  {args.idle} idle connections opened in", f"{opened_s:.2f} s",
         f"publish done {during:.1f} s after the first"),
        ("idle connections held (min-median-max)",
         f"{min(idle_closed):.1f}-{statistics.median(idle_closed):.1f}-"
         f"{max(idle_closed):.1f} s",
         f"closed by keep_alive_timeout {keep:g} s{bounded(idle_closed, keep + 3)}"),
        (f"header tricklers held (x{len(heads)}, 1 B/s)", held_range(heads),
         answers(heads) + bounded([t.held for t in heads], bound + 2)),
        (f"upload tricklers held (x{len(bodies)}, 1 B/s)", held_range(bodies),
         answers(bodies) + bounded([t.held for t in bodies], 2 * bound + 2)),
        ("  partial uploads left in tmp/ / body_timeout records",
         f"{len(leftovers)} / {cut_records}",
         "" if not leftovers and cut_records == len(bodies) else "MISSED"),
        (f"{cap + 10} connections at once", f"{refused} refused",
         f"503 too_many_connections; one more answered in {slowest * 1000:.1f} ms; "
         f"{kept} kept; health afterwards HTTP {health_after}"
         + ("" if refused >= 10 and health_after == 200 else "  MISSED")),
        ("32 MiB header without a token", big, f"{big_s:.2f} s; agent peak RSS "
         f"{rss1:.0f} -> {rss2:.0f} MiB (+{rss2 - rss1:.0f})"
         + ("" if big.startswith("431") and rss2 - rss1 < 16 else "  MISSED")),
        ("agent peak RSS, start -> after the load", f"{rss0:.0f} -> {rss1:.0f} MiB", "VmHWM"),
    ]
    with open("/proc/loadavg") as fh:
        load = " ".join(fh.read().split()[:3])
    print(f"bench_agent_http ({'quick' if args.quick else 'default limits'}); "
          f"load average {load}\n")
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"| {'measure':<{width}} | {'value':>{vwidth}} | note |")
    print(f"|{'-' * (width + 2)}|{'-' * (vwidth + 2)}|------|")
    for name, value, note in rows:
        print(f"| {name:<{width}} | {value:>{vwidth}} | {note} |")


if __name__ == "__main__":
    main()
