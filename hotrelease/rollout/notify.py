"""Tell ops that an update took the urgent lane: run a command and/or POST to a webhook.

Both get the decision as JSON (the command on stdin, plus HOTRELEASE_* variables). Both are
bounded by the configured timeout; a failure raises `NotifyError` (exit 5) naming the hook.
Called by the release session (urgent rollouts) and `plan --notify`; imports `errors` only.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from typing import Any

from hotrelease.errors import NotifyError


def _env(decision: Any) -> dict[str, str]:
    return {"HOTRELEASE_NAME": decision.name, "HOTRELEASE_VERSION": decision.version,
            **dict(line.split("=", 1) for line in decision.dotenv().splitlines())}


def run_command(command: list[str], decision: Any, timeout: int,
                base_env: Mapping[str, str] | None = None) -> None:
    payload = json.dumps(decision.to_dict(), sort_keys=True)
    env = {**(os.environ if base_env is None else base_env), **_env(decision)}
    try:
        proc = subprocess.run(command, input=payload, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except FileNotFoundError:
        raise NotifyError(f"notify command {command[0]!r} not found") from None
    except subprocess.TimeoutExpired:
        raise NotifyError(f"notify command {command[0]!r} timed out after {timeout}s") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [""])[-1]
        raise NotifyError(f"notify command {command[0]!r} exited {proc.returncode}: {tail}")


def post_webhook(url: str, decision: Any, timeout: int) -> int:
    import requests

    body = {"event": "hotrelease.urgent", **decision.to_dict()}
    try:
        response = requests.post(url, json=body, timeout=timeout)
    except requests.RequestException as exc:
        raise NotifyError(f"notify webhook {url}: {type(exc).__name__}") from None
    if not 200 <= response.status_code < 300:
        raise NotifyError(f"notify webhook {url}: HTTP {response.status_code}")
    return response.status_code


def nobody_to_notify(cfg: Any, where: Any) -> str | None:
    """Why an urgent rollout would reach nobody, or None when a hook is configured. Said
    plainly, never a silent no-op."""
    if cfg is not None and cfg.targets:
        return None
    return f"nobody was notified: {where} has no [notify] webhook or command"


def notify_urgent(decision: Any, cfg: Any) -> list[str]:
    """Run every configured hook; returns what was done (for the output)."""
    done = []
    if cfg.command:
        run_command(cfg.command, decision, cfg.timeout)
        done.append(f"ran {cfg.command[0]}")
    if cfg.webhook:
        status = post_webhook(cfg.webhook, decision, cfg.timeout)
        done.append(f"posted to {cfg.webhook} (HTTP {status})")
    return done
