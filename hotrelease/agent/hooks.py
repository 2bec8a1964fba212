"""Running the hooks of a switch: precheck, reload and health check. Every call has a
deadline; a hang is a failure.

Each returns `(ok, detail)` (the health check also the number of probes); none raises for an
ordinary failure of the host. A command hook runs behind a gate and is recorded in
`agent.hookregistry` before it can act, so none outlives the agent.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from hotrelease.agent.config import HealthCheck, PrecheckHook, ReloadHook
from hotrelease.agent.hookregistry import (
    HOOK_ID_ENV,
    KILL_WAIT,
    TERM_GRACE,
    HookRefused,
    RunningHook,
    registry,
    signal_group,
    stop_groups,
    wait_gone,
)
from hotrelease.errors import AgentStopping

MAX_BODY = 64 * 1024
_SH = "/bin/sh"
_GATE = 'IFS= read -r go || exit 125; [ "$go" = go ] || exit 125; exec "$@" </dev/null'


def _not_runnable(cmd: str, env: dict[str, str]) -> str | None:
    """Why `cmd` cannot be exec'd (the error Popen would have raised), else None."""
    if "/" not in cmd:
        return None if shutil.which(cmd, path=env.get("PATH", os.defpath)) else \
            "No such file or directory"
    if not os.path.exists(cmd):
        return "No such file or directory"
    if os.path.isdir(cmd) or not os.access(cmd, os.X_OK):
        return "Permission denied"
    return None


def _kill_and_reap(proc: subprocess.Popen[bytes], *, grace: float = 0.0) -> bool:
    """Stop the hook's whole group (SIGTERM and `grace` first, if given), reap the leader,
    and say whether the group is gone."""
    if grace > 0:
        gone = bool(stop_groups([proc.pid], grace=grace)[proc.pid]["exited"])
    else:
        signal_group(proc.pid, signal.SIGKILL)
        gone = not wait_gone([proc.pid], KILL_WAIT)
    try:
        proc.communicate(timeout=KILL_WAIT)
    except subprocess.TimeoutExpired:  # someone outside the group holds its output open
        if proc.stdout is not None:
            proc.stdout.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=KILL_WAIT)
    return gone


def _run_command(argv: list[str], timeout: float, env: dict[str, str], *,
                 kind: str) -> tuple[bool, str]:
    full_env = {**os.environ, **env}
    problem = _not_runnable(argv[0], full_env)
    if problem is not None:
        return False, f"cannot run {argv[0]!r}: {problem}"
    token = secrets.token_hex(16)
    full_env[HOOK_ID_ENV] = token
    gate_read, gate = os.pipe()
    try:
        try:
            proc = subprocess.Popen([_SH, "-c", _GATE, "hotrelease-hook", *argv],
                                    stdin=gate_read, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env=full_env,
                                    start_new_session=True)
        finally:
            os.close(gate_read)
    except OSError as exc:
        os.close(gate)
        return False, f"cannot run {argv[0]!r}: {exc.strerror}"
    hook: RunningHook | None = None
    gone = False
    try:
        try:
            hook = registry.register(proc, argv, kind, env, token)
        except (HookRefused, AgentStopping) as exc:
            os.close(gate)
            gate = -1  # the gate reads EOF: the command never runs
            gone = _kill_and_reap(proc)
            if isinstance(exc, AgentStopping):
                raise
            return False, f"{argv[0]} not started: {exc}"
        with contextlib.suppress(BrokenPipeError):  # the gate died: its status says how
            os.write(gate, b"go\n")
        os.close(gate)
        gate = -1
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            gone = _kill_and_reap(proc)
            return False, f"{argv[0]} did not finish within {timeout:g}s"
        gone = True  # finished: what it left running in its group on purpose is its own
    except BaseException:
        # The wait was interrupted (SIGINT, the agent stopping during recovery, ...): the
        # hook must not outlive it.
        gone = _kill_and_reap(proc, grace=TERM_GRACE)
        raise
    finally:
        if gate >= 0:
            os.close(gate)
        if hook is not None:
            registry.unregister(hook, remove_record=gone)
    if proc.returncode != 0 and hook is not None and hook.terminated:
        raise AgentStopping(f"{argv[0]} was stopped: the agent is stopping")
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
    return _run_command(argv, hook.timeout, env, kind="precheck")


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
        return _run_command(hook.command, hook.timeout, env, kind="reload")
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
        return _run_command(check.command, check.timeout, env, kind="health")
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
