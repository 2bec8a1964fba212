"""Reload hooks and health-check semantics (retries, consecutive errors, minimum healthy
time, hangs), and the JSON body cap of the API."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from conftest import AGENT_TOKEN

from hotrelease.agent.config import HealthCheck, ReloadHook
from hotrelease.agent.hooks import run_health, run_reload


def script(tmp_path: Path, outcomes: str) -> list[str]:
    """A command that succeeds or fails per call following `outcomes` ("ffs..." - the last
    letter repeats), counting calls in a file."""
    counter = tmp_path / "calls"
    code = (f"import pathlib, sys; p = pathlib.Path({str(counter)!r}); "
            "n = int(p.read_text()) if p.exists() else 0; p.write_text(str(n + 1)); "
            f"o = {outcomes!r}; sys.exit(0 if o[min(n, len(o) - 1)] == 's' else 1)")
    return [sys.executable, "-c", code]


def check(cmd: list[str], **kw) -> HealthCheck:
    base = dict(timeout=5.0, interval=0.0, retries=0, max_consecutive_errors=1,
                min_healthy_seconds=0.0, require_version=False)
    base.update(kw)
    return HealthCheck("command", command=cmd, **base)  # type: ignore[arg-type]


def health(hc: HealthCheck) -> tuple[bool, str, int]:
    return run_health(hc, name="greeter", version="1.0.0", current_path="/nonexistent")


def test_retries_tolerate_a_warming_up_host(tmp_path: Path) -> None:
    ok, _, probes = health(check(script(tmp_path, "ffs"), retries=2))
    assert ok and probes == 3


def test_too_few_retries_fail(tmp_path: Path) -> None:
    ok, detail, probes = health(check(script(tmp_path, "ffs"), retries=1))
    assert not ok and probes == 2 and "not healthy after 2" in detail


def test_consecutive_errors_after_becoming_healthy_fail(tmp_path: Path) -> None:
    cmd = script(tmp_path, "sfff")
    ok, detail, _ = health(check(cmd, max_consecutive_errors=2, min_healthy_seconds=60))
    assert not ok and "2 consecutive" in detail


def test_isolated_error_within_min_healthy_time_is_tolerated(tmp_path: Path) -> None:
    cmd = script(tmp_path, "sfs")
    ok, _, probes = health(check(cmd, max_consecutive_errors=2, min_healthy_seconds=0.05,
                                 interval=0.03))
    assert ok and probes >= 3


def test_a_hanging_command_fails_at_its_timeout(tmp_path: Path) -> None:
    ok, detail, _ = health(check(["sleep", "30"], timeout=0.3))
    assert not ok and "did not finish within 0.3s" in detail


class _Silent(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - never answers in time
        self.server.release.wait(10)  # type: ignore[attr-defined]

    def log_message(self, *args: object) -> None:
        return


def test_a_hanging_url_fails_at_its_timeout() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Silent)
    server.daemon_threads = True
    server.release = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        hc = HealthCheck("url", url=f"http://127.0.0.1:{server.server_port}/health",
                         timeout=0.3, retries=0)
        ok, detail, _ = health(hc)
        assert not ok and "did not answer within 0.3s" in detail
    finally:
        server.release.set()  # type: ignore[attr-defined]
        server.shutdown()
        server.server_close()


def test_reload_hooks(tmp_path: Path) -> None:
    ok, _ = run_reload(ReloadHook("command", command=["true"]), name="g", version="1",
                       current_path="x")
    assert ok
    ok, detail = run_reload(ReloadHook("command", command=["false"]), name="g", version="1",
                            current_path="x")
    assert not ok and "exited with 1" in detail
    ok, detail = run_reload(ReloadHook("command", command=["sleep", "30"], timeout=0.3),
                            name="g", version="1", current_path="x")
    assert not ok and "did not finish" in detail
    pid_file = tmp_path / "pid"
    ok, detail = run_reload(ReloadHook("signal", pid_file=pid_file), name="g", version="1",
                            current_path="x")
    assert not ok and "cannot read pid file" in detail
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        pid_file.write_text(f"{sleeper.pid}\n")
        ok, _ = run_reload(ReloadHook("signal", pid_file=pid_file,
                                      signal=int(signal.SIGTERM)),
                           name="g", version="1", current_path="x")
        assert ok and sleeper.wait(timeout=10) == -signal.SIGTERM
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait(timeout=10)
    pid_file.write_text("1\n")
    assert not run_reload(ReloadHook("signal", pid_file=pid_file), name="g", version="1",
                          current_path="x")[0]


@pytest.fixture
def agent(make_agent):
    return make_agent()


def test_json_bodies_are_capped(agent) -> None:
    url = f"{agent.url}/v1/plugins/greeter/activate"
    headers = {"Authorization": f"Bearer {AGENT_TOKEN}", "Content-Type": "application/json"}
    big = b'{"version": "1.0.0", "reason": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    declared = requests.post(url, data=big, headers=headers, timeout=30)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "too_large"

    def chunks():
        yield big[: 1024 * 1024]
        yield big[1024 * 1024:]

    chunked = requests.post(url, data=chunks(), headers=headers, timeout=30)
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "too_large"
    small = requests.post(url, json={"version": "1.0.0"}, headers=headers, timeout=30)
    assert small.status_code == 404 and small.json()["error"]["code"] == "not_stored"  # twin
