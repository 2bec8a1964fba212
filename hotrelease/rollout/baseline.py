"""The fleet as it is: agent clients for the configured nodes, and the version they run now
as the baseline of a release decision (`policy.baseline = "fleet"`).

The gate decides over injected inputs only; `fleet_baseline()` is what the callers of
`gate.inputs.decide_release` (the release session, the child pipeline, `classify`/`plan`)
hand it, so the gate never talks to the fleet. Imports `config.inventory`, `gate`,
`rollout.nodes`, `trust` and the agent client.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial

import semver

from hotrelease.config.inventory import Inventory
from hotrelease.errors import ConfigError
from hotrelease.gate.inputs import FleetBaseline
from hotrelease.rollout.nodes import AgentAPI, read_fleet
from hotrelease.trust.versions import parse_version

TOKEN_ENV_DEFAULT = "HOTRELEASE_AGENT_TOKEN"


def make_clients(inventory: Inventory,
                 env: Mapping[str, str] | None = None) -> dict[str, AgentAPI]:
    """One agent client per node, each with the bearer token from its variable (`token_env`,
    default HOTRELEASE_AGENT_TOKEN) in `env` (default: os.environ)."""
    from hotrelease.agent.client import AgentClient

    env = os.environ if env is None else env
    s = inventory.settings
    clients: dict[str, AgentAPI] = {}
    for node in inventory.nodes:
        var = node.token_env or TOKEN_ENV_DEFAULT
        token = env.get(var)
        if not token:
            raise ConfigError(f"node {node.name}: agent token variable {var} is not set")
        clients[node.name] = AgentClient(node.url, token, timeout=s.read_timeout,
                                         connect_timeout=s.connect_timeout)
    return clients


def fleet_baseline(inventory: Inventory | None,
                   env: Mapping[str, str] | None = None) -> FleetBaseline | None:
    """The fleet baseline of `inventory` for `decide_release(fleet_baseline=...)`: asked
    only when the policy wants it, it reads the agents then (tokens from `env`). None
    without nodes."""
    if inventory is None or not inventory.nodes:
        return None
    return partial(highest_running, inventory, env=env)


def highest_running(inventory: Inventory, name: str, candidate: semver.Version, *,
                    env: Mapping[str, str] | None = None
                    ) -> tuple[semver.Version, str] | None:
    """The highest version (other than the candidate) that the configured agents report
    running, and which nodes run it; None when no reachable node runs the plugin yet."""
    states = read_fleet(make_clients(inventory, env), name, [n.name for n in inventory.nodes],
                        inventory.settings)
    running: dict[semver.Version, list[str]] = {}
    for state in states.values():
        if state.reachable and state.current is not None:
            version = parse_version(state.current)
            if version != candidate:
                running.setdefault(version, []).append(state.node)
    if not running:
        return None
    best = max(running)
    return best, f"fleet ({', '.join(sorted(running[best]))} run {best})"
