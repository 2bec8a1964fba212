"""A throwaway fleet on this machine: N real agents, each managing a Python plugin host,
on free loopback ports in a temp dir. Used by `hotrelease demo` (`ci.demo`); stops
everything it starts. Imports `agent.auth` (to mint the fleet's token) and `errors`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from hotrelease.agent.auth import hash_token, new_token
from hotrelease.errors import UnreachableError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalNode:
    name: str
    root: Path
    agent_port: int
    host_port: int
    agent: subprocess.Popen | None = None
    host: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.agent_port}"

    @property
    def host_url(self) -> str:
        return f"http://127.0.0.1:{self.host_port}"

    def serving(self) -> str | None:
        """The version the plugin host actually serves (not what the agent thinks)."""
        try:
            return requests.get(f"{self.host_url}/health", timeout=2).json().get("version")
        except (requests.RequestException, ValueError):
            return None


class LocalFleet:
    def __init__(self, base: Path, count: int, release_keys: list[Path],
                 security_keys: tuple[Path, ...] = (), plugin: str = "greeter") -> None:
        self.base = base
        self.plugin = plugin
        self.token = new_token()
        self.nodes = [LocalNode(f"node-{i + 1}", base / f"node-{i + 1}", free_port(),
                                free_port()) for i in range(count)]
        self.release_keys = release_keys
        self.security_keys = list(security_keys)

    def _agent_toml(self, node: LocalNode) -> str:
        keys = ", ".join(f'"{p}"' for p in self.release_keys)
        sec = ", ".join(f'"{p}"' for p in self.security_keys)
        return (f'[agent]\ndata_dir = "{node.root / "data"}"\nlisten = "127.0.0.1"\n'
                f"port = {node.agent_port}\nnode_name = \"{node.name}\"\n\n"
                f"[trust]\nrelease_keys = [{keys}]\nsecurity_keys = [{sec}]\n\n"
                f'[[tokens]]\nname = "demo"\nsha256 = "{hash_token(self.token)}"\n\n'
                f"[plugins.{self.plugin}]\n"
                f'reload = {{ url = "{node.host_url}/admin/reload", timeout = 5 }}\n'
                f'health = {{ url = "{node.host_url}/health", interval = 0.05, '
                "retries = 40, min_healthy_seconds = 0.3, timeout = 2 }\n")

    def start(self) -> LocalFleet:
        for node in self.nodes:
            node.root.mkdir(parents=True)
            config = node.root / "agent.toml"
            config.write_text(self._agent_toml(node))
            log = open(node.root / "agent.log", "ab")  # noqa: SIM115 - owned by the child
            node.agent = subprocess.Popen(
                [sys.executable, "-m", "hotrelease", "agent", "serve", "--config", str(config)],
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
            current = node.root / "data" / "plugins" / self.plugin / "current"
            node.host = subprocess.Popen(
                [sys.executable, "-m", "hotrelease.agent.pyhost", "--current", str(current),
                 "--port", str(node.host_port), "--pid-file", str(node.root / "host.pid")],
                stdout=subprocess.DEVNULL, stderr=open(node.root / "host.log", "ab"),  # noqa: SIM115
                start_new_session=True)
        for node in self.nodes:
            self._wait_up(node)
        return self

    def _wait_up(self, node: LocalNode, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for url in (f"{node.url}/v1/health", f"{node.host_url}/health"):
            while True:
                for proc in (node.agent, node.host):
                    if proc is not None and proc.poll() is not None:
                        raise UnreachableError(f"{node.name}: a local process exited early "
                                               f"(see {node.root}/*.log)")
                try:
                    requests.get(url, timeout=1)
                    break
                except requests.RequestException:
                    if time.monotonic() > deadline:
                        raise UnreachableError(f"{node.name}: {url} did not come up") from None
                    time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            for proc in (node.agent, node.host):
                if proc is not None and proc.poll() is None:
                    try:
                        os.killpg(proc.pid, signal.SIGTERM)
                        proc.wait(timeout=5)
                    except (ProcessLookupError, subprocess.TimeoutExpired):
                        proc.kill()
                        proc.wait(timeout=5)

    def __enter__(self) -> LocalFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inventory_toml(self) -> str:
        return "".join(f'\n[[nodes]]\nname = "{n.name}"\nurl = "{n.url}"\n'
                       for n in self.nodes)
