"""A bounded schemathesis run against a live agent: no 5xx, documented statuses and types."""

from __future__ import annotations

import pytest
import schemathesis
from conftest import AGENT_TOKEN, AgentProcess, agent_toml, free_port
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)


@pytest.fixture(scope="module")
def live_agent(tmp_path_factory):
    from hotrelease.trust.keys import generate_keypair

    root = tmp_path_factory.mktemp("schema-agent")
    generate_keypair(root / "release")
    generate_keypair(root / "security")
    port = free_port()
    agent = AgentProcess(root, agent_toml(root / "data", port, [root / "release.pub"],
                                          security_keys=[root / "security.pub"]), port)
    agent.start()
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def agent_schema(live_agent):
    return schemathesis.openapi.from_url(f"{live_agent.url}/v1/openapi.json")


schema = schemathesis.pytest.from_fixture("agent_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_api_has_no_server_errors(case, live_agent) -> None:
    _call(case, live_agent)


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_api_on_a_configured_plugin_has_no_server_errors(case, live_agent) -> None:
    # Random names almost never hit the configured slot: aim at it to reach deeper code.
    if case.path_parameters and "name" in case.path_parameters:
        case.path_parameters["name"] = "greeter"
    _call(case, live_agent)
    assert (live_agent.data_dir / "plugins" / "greeter").is_dir()


def _call(case, live_agent) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {AGENT_TOKEN}"}, timeout=20,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                response_schema_conformance])
    assert live_agent.proc is not None and live_agent.proc.poll() is None

