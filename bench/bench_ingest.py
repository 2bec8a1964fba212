"""Agent benchmarks: streamed ingest vs a minimal stdlib server, peak RSS, activation latency.

    python bench/bench_ingest.py [--size-mib 500] [--rss-mib 1024] [--activations 20]

Everything runs on 127.0.0.1 in a temp dir (deleted at the end). Both uploads use
`curl -T` so the client is the same; both servers hash, write, fsync and rename.
Prints one table. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TOKEN = "bench-token-0123456789abcdef"
MIB = 1024 * 1024

# The baseline: a minimal streaming server (stdlib only) that does what an ingest must do.
MINIMAL_SERVER = textwrap.dedent('''
    import hashlib, os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    DEST = sys.argv[2]
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *a): pass
        def do_PUT(self):
            import json, time
            started = time.perf_counter()
            left = int(self.headers["Content-Length"])
            tmp = os.path.join(DEST, "upload.tmp")
            digest = hashlib.sha256()
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            with open(tmp, "wb", buffering=0) as fh:
                while left:
                    n = self.rfile.readinto(view[:min(left, len(buf))])
                    if not n:
                        break
                    digest.update(view[:n])
                    fh.write(view[:n])
                    left -= n
                os.fsync(fh.fileno())
            os.replace(tmp, os.path.join(DEST, "stored"))
            fd = os.open(DEST, os.O_RDONLY); os.fsync(fd); os.close(fd)
            body = json.dumps({"sha256": digest.hexdigest(),
                               "seconds": time.perf_counter() - started}).encode()
            self.send_response(201); self.send_header("Content-Length", str(len(body)))
            self.end_headers(); self.wfile.write(body)
    HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
''')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {url}")


def make_bundle(out: Path, name: str, files: dict[str, Path | bytes],
                compress: int = 1) -> tuple[Path, list]:
    from hotrelease.trust.digest import sha256_file
    from hotrelease.trust.manifest import FileEntry

    out.mkdir(parents=True, exist_ok=True)
    bundle = out / f"{name}.tar.gz"
    entries = []
    with tarfile.open(bundle, "w:gz", compresslevel=compress) as tar:
        for rel, src in files.items():
            path = src if isinstance(src, Path) else out / f"src-{rel}"
            if not isinstance(src, Path):
                path.write_bytes(src)
            tar.add(path, arcname=rel)
            digest, size = sha256_file(path)
            entries.append(FileEntry(rel, digest, size))
    return bundle, entries


def make_manifest(out: Path, key_path: Path, name: str, version: str, bundle: Path,
                  entries: list) -> tuple[Path, Path]:
    from hotrelease.trust.digest import sha256_file
    from hotrelease.trust.keys import MANIFEST_TYPE, Envelope, load_private_key
    from hotrelease.trust.manifest import BundleRef, ReleaseManifest

    digest, size = sha256_file(bundle)
    manifest = ReleaseManifest(name=name, version=version, kind="python",
                               bundle=BundleRef(bundle.name, digest, size), files=entries,
                               expires=datetime.now(UTC) + timedelta(days=30))
    manifest_path = out / f"{name}-{version}.manifest.json"
    manifest.save(manifest_path)
    envelope = Envelope(MANIFEST_TYPE)
    envelope.add_signature(manifest.canonical_bytes(), load_private_key(key_path))
    sig = Path(f"{manifest_path}.sig")
    envelope.save(sig)
    return manifest_path, sig


def make_release(work: Path, key_path: Path, name: str, version: str,
                 files: dict[str, Path | bytes], compress: int = 1) -> tuple[Path, Path, Path]:
    """A signed release made by hand (a bundle with the given files)."""
    out = work / f"{name}-{version}"
    bundle, entries = make_bundle(out, f"{name}-{version}", files, compress)
    manifest, sig = make_manifest(out, key_path, name, version, bundle, entries)
    return manifest, sig, bundle


def start_agent(work: Path, pub: Path, plugins: str, max_upload: int) -> tuple[subprocess.Popen,
                                                                               str]:
    from hotrelease.agent.auth import hash_token

    port = free_port()
    cfg = work / f"agent-{port}.toml"
    cfg.write_text(f'[agent]\ndata_dir = "{work / f"data-{port}"}"\nport = {port}\n'
                   f"max_upload_bytes = {max_upload}\n[trust]\nrelease_keys = [\"{pub}\"]\n"
                   f'[[tokens]]\nname = "bench"\nsha256 = "{hash_token(TOKEN)}"\n{plugins}')
    proc = subprocess.Popen([sys.executable, "-m", "hotrelease", "agent", "serve", "--config",
                             str(cfg)], cwd=REPO, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v1/health")
    return proc, url


def curl_put(url: str, path: Path, headers: dict[str, str]) -> tuple[float, str]:
    args = ["curl", "-sS", "-T", str(path), "-H", "Expect:"]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    start = time.perf_counter()
    out = subprocess.run(args + [url], capture_output=True, text=True, timeout=900, check=True)
    return time.perf_counter() - start, out.stdout


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def drop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def bench_ingest(work: Path, key: Path, pub: Path, size_mib: int,
                 rounds: int) -> dict[str, float]:
    """`rounds` x (minimal server, then agent), same bundle, medians reported."""
    blob = work / "blob.bin"
    with open(blob, "wb") as fh:
        for _ in range(size_mib):
            fh.write(os.urandom(MIB))
    out = work / "big"
    bundle, entries = make_bundle(out, "big", {"blob.bin": blob}, compress=0)
    blob.unlink()
    size = bundle.stat().st_size
    samples: dict[str, list[float]] = {k: [] for k in (
        "minimal_wall", "minimal_server", "agent_wall", "agent_receive", "agent_verify",
        "agent_extract")}

    port = free_port()
    dest = work / "minimal"
    dest.mkdir()
    minimal = subprocess.Popen([sys.executable, "-c", MINIMAL_SERVER, str(port), str(dest)])
    proc, url = start_agent(work, pub, "[plugins.big]\n", 4 * 1024 * MIB)
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        for i in range(rounds):
            subprocess.run(["sync"], check=True)
            seconds, reply = curl_put(f"http://127.0.0.1:{port}/x", bundle, {})
            samples["minimal_wall"].append(seconds)
            samples["minimal_server"].append(json.loads(reply)["seconds"])
            manifest, sig = make_manifest(out, key, "big", f"1.0.{i}", bundle, entries)
            subprocess.run(["sync"], check=True)
            headers = {"Authorization": f"Bearer {TOKEN}",
                       "X-Hotrelease-Manifest": base64.b64encode(manifest.read_bytes()).decode(),
                       "X-Hotrelease-Signature": base64.b64encode(sig.read_bytes()).decode(),
                       "Content-Type": "application/octet-stream"}
            seconds, reply = curl_put(f"{url}/v1/plugins/big/releases/1.0.{i}", bundle, headers)
            doc = json.loads(reply)
            if doc.get("status") != "stored":
                raise SystemExit(f"agent refused the upload: {reply[:300]}")
            samples["agent_wall"].append(seconds)
            samples["agent_receive"].append(doc["timings"]["receive_ms"] / 1000)
            samples["agent_verify"].append(doc["timings"]["verify_ms"] / 1000)
            samples["agent_extract"].append(doc["timings"]["extract_ms"] / 1000)
            shutil.rmtree(Path(doc["path"]), ignore_errors=True)  # keep the disk use flat
        rss = peak_rss_mib(proc.pid)
    finally:
        drop(minimal)
        drop(proc)
    shutil.rmtree(dest, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    for data in work.glob("data-*"):
        shutil.rmtree(data, ignore_errors=True)
    result = {k: statistics.median(v) for k, v in samples.items()}
    result.update(bundle_mib=size / MIB, agent_rss_mib=rss, rounds=rounds)
    return result


def bench_rss(work: Path, key: Path, pub: Path, size_mib: int) -> float:
    return bench_ingest(work, key, pub, size_mib, rounds=1)["agent_rss_mib"]


def bench_activation(work: Path, key: Path, pub: Path, count: int) -> dict[str, float]:
    import requests

    plugin_src = (REPO / "examples" / "python-plugin" / "src" / "plugin.py").read_text()
    greetings = (REPO / "examples" / "python-plugin" / "src" / "greetings.txt").read_bytes()
    host_port = free_port()
    host_url = f"http://127.0.0.1:{host_port}"
    plugins = (f'[plugins.greeter]\nreload = {{ url = "{host_url}/admin/reload" }}\n'
               "# health check excluded on purpose: latency = switch + reload\n")
    proc, url = start_agent(work, pub, plugins, 64 * MIB)
    data_dir = next(work.glob("data-*"))
    host = subprocess.Popen([sys.executable, "-m", "hotrelease.agent.pyhost", "--current",
                             str(data_dir / "plugins" / "greeter" / "current"), "--port",
                             str(host_port)], cwd=REPO, stderr=subprocess.DEVNULL)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    try:
        wait_http(f"{host_url}/health")
        from hotrelease.agent.client import AgentClient

        client = AgentClient(url, TOKEN)
        versions = [f"1.0.{i}" for i in range(count + 1)]
        for version in versions:
            text = plugin_src.replace('VERSION = "0.0.0"', f'VERSION = "{version}"')
            m, _, _ = make_release(work / "rel", key, "greeter", version,
                                   {"plugin.py": text.encode(), "greetings.txt": greetings})
            client.upload(m)
        client.activate("greeter", versions[0])
        request_ms, serving_ms, switch_ms, reload_ms = [], [], [], []
        for version in versions[1:]:
            start = time.perf_counter()
            doc = session.post(f"{url}/v1/plugins/greeter/activate",
                               json={"version": version}, timeout=30).json()
            request_ms.append((time.perf_counter() - start) * 1000)
            served = session.get(f"{host_url}/health", timeout=5).json()["version"]
            serving_ms.append((time.perf_counter() - start) * 1000)
            if doc.get("result") != "activated" or served != version:
                raise SystemExit(f"activation failed: {doc} / host serves {served}")
            switch_ms.append(doc["timings"]["switch_ms"])
            reload_ms.append(doc["timings"]["reload_ms"])
    finally:
        drop(host)
        drop(proc)

    def p95(values: list[float]) -> float:
        return sorted(values)[max(0, int(round(0.95 * len(values))) - 1)]

    return {"n": count, "request_p50": statistics.median(request_ms),
            "request_p95": p95(request_ms), "serving_p50": statistics.median(serving_ms),
            "serving_p95": p95(serving_ms), "switch_p50": statistics.median(switch_ms),
            "reload_p50": statistics.median(reload_ms)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=500)
    parser.add_argument("--rss-mib", type=int, default=1024)
    parser.add_argument("--activations", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="ingest rounds (median)")
    parser.add_argument("--tmp", default=None, help="work dir parent (default: system temp)")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is required")

    from hotrelease.trust.keys import generate_keypair

    work = Path(tempfile.mkdtemp(prefix="hotrelease-bench-", dir=args.tmp))
    try:
        generate_keypair(work / "release")
        key, pub = work / "release.key", work / "release.pub"
        ingest = bench_ingest(work, key, pub, args.size_mib, args.rounds)
        rss = bench_rss(work, key, pub, args.rss_mib)
        act = bench_activation(work, key, pub, args.activations)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mib = ingest["bundle_mib"]
    m_wall, m_srv = mib / ingest["minimal_wall"], mib / ingest["minimal_server"]
    a_recv, a_wall = mib / ingest["agent_receive"], mib / ingest["agent_wall"]
    rows = [
        ("bundle size / rounds (medians)", f"{mib:.0f} MiB x {ingest['rounds']:.0f}", ""),
        ("minimal stdlib server, curl -T wall", f"{m_wall:.0f} MiB/s",
         "receive+hash+write+fsync+rename"),
        ("minimal stdlib server, server-side", f"{m_srv:.0f} MiB/s", ""),
        ("agent ingest phase, server-side", f"{a_recv:.0f} MiB/s",
         f"{a_recv / m_srv:.2f}x minimal server-side; receive+hash+write+fsync"),
        ("agent whole PUT, curl -T wall", f"{a_wall:.0f} MiB/s",
         f"{a_wall / m_wall:.2f}x minimal wall; + verify {ingest['agent_verify']:.2f}s "
         f"+ extract {ingest['agent_extract']:.2f}s + rename"),
        (f"agent peak RSS, {args.size_mib} MiB uploads", f"{ingest['agent_rss_mib']:.0f} MiB",
         "VmHWM"),
        (f"agent peak RSS, {args.rss_mib} MiB upload", f"{rss:.0f} MiB", "VmHWM; goal < 150"),
        ("activation -> response (p50/p95)",
         f"{act['request_p50']:.1f} / {act['request_p95']:.1f} ms",
         f"n={act['n']}, Python host, reload by URL, no health check"),
        ("activation -> host serves it (p50/p95)",
         f"{act['serving_p50']:.1f} / {act['serving_p95']:.1f} ms", "incl. one GET /health"),
        ("  of which switch / reload (p50)",
         f"{act['switch_p50']:.2f} / {act['reload_p50']:.2f} ms", "agent-reported"),
    ]
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>{vwidth}}  note")
    print(f"{'-' * width}  {'-' * vwidth}  ----")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>{vwidth}}  {note}")


if __name__ == "__main__":
    main()
