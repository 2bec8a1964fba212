"""Agent-side gates before a switch: signed stage approvals (when approver keys are
configured) and the precheck hook. Each refusal changes nothing; each has a passing twin."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hotrelease.errors import HotreleaseError
from hotrelease.trust.approvals import Approval
from hotrelease.trust.keys import load_private_key
from hotrelease.trust.manifest import load_manifest


def gated_agent(make_agent, approver_pub, node_name="node-a", plugins=None):
    agent = make_agent(start=False, plugins=plugins)
    text = agent.config.read_text()
    text = text.replace("[agent]\n", f'[agent]\nnode_name = "{node_name}"\n', 1)
    assert "approval_keys = []" in text
    text = text.replace("approval_keys = []", f'approval_keys = ["{approver_pub}"]', 1)
    agent.config.write_text(text)
    return agent.start()


def approval_for(release, key, *, nodes=("node-a",), digest=None, hours=1):
    manifest = load_manifest(release.manifest)
    now = datetime.now(UTC)
    doc = Approval(manifest.name, manifest.version, digest or manifest.bundle.sha256,
                   "wave-1", "alice", now, now + timedelta(hours=hours), tuple(nodes))
    return {"approval": doc.to_dict(),
            "envelope": doc.sign(load_private_key(key.private)).to_dict()}


@pytest.fixture
def approver(make_key):
    return make_key("approver")


def activate(agent, release, approval=None):
    with agent.client() as client:
        client.upload(release.manifest)
        return client.activate("greeter", release.version, stage="wave-1", approval=approval)


def refused(agent, release, approval):
    with agent.client() as client:
        client.upload(release.manifest)
        before = agent.snapshot()
        with pytest.raises(HotreleaseError) as info:
            client.activate("greeter", release.version, stage="wave-1", approval=approval)
        assert agent.snapshot() == before, "a refused activation changes nothing"
        assert client.plugin("greeter").get("current") is None
    assert agent.history()[-1]["result"] == "refused"
    return info.value


def test_activation_without_approval_is_refused(make_agent, build_plugin, approver):
    agent = gated_agent(make_agent, approver.public)
    release = build_plugin("1.0.0")
    error = refused(agent, release, None)
    assert error.code == "approval_required"
    result = activate(agent, release, approval_for(release, approver))
    assert result["result"] == "activated"


@pytest.mark.parametrize("variant, code", [
    ("other-node", "identity_mismatch"),
    ("other-digest", "identity_mismatch"),
    ("expired", "expired"),
    ("wrong-key", "bad_signature"),
    ("unsigned", "approval_required"),
])
def test_bad_approvals_are_refused(make_agent, build_plugin, approver, make_key, variant,
                                   code):
    agent = gated_agent(make_agent, approver.public)
    release = build_plugin("1.0.0")
    if variant == "other-node":
        approval = approval_for(release, approver, nodes=("node-b",))
    elif variant == "other-digest":
        approval = approval_for(release, approver, digest="f" * 64)
    elif variant == "expired":
        approval = approval_for(release, approver, hours=-1)
    elif variant == "wrong-key":
        approval = approval_for(release, make_key("intruder"))
    else:
        approval = {"approval": approval_for(release, approver)["approval"]}
    assert refused(agent, release, approval).code == code


def test_rollback_needs_no_approval(make_agent, build_plugin, approver):
    agent = gated_agent(make_agent, approver.public)
    first, second = build_plugin("1.0.0"), build_plugin("1.1.0")
    assert activate(agent, first, approval_for(first, approver))["result"] == "activated"
    assert activate(agent, second, approval_for(second, approver))["result"] == "activated"
    with agent.client() as client:
        assert client.rollback("greeter")["current"] == "1.0.0"


def _plugins_with_precheck(command: str) -> str:
    return f"[plugins.greeter]\nprecheck = {{ command = {command}, timeout = 10 }}\n"


def test_failing_precheck_refuses_before_the_switch(make_agent, build_plugin):
    agent = make_agent(plugins=_plugins_with_precheck(
        '["python3", "-c", "import sys; print(\'abi mismatch\'); sys.exit(1)"]'))
    release = build_plugin("1.0.0")
    with agent.client() as client:
        client.upload(release.manifest)
        before = agent.snapshot()
        with pytest.raises(HotreleaseError) as info:
            client.activate("greeter", "1.0.0")
        assert info.value.code == "precheck_failed" and "abi mismatch" in str(info.value)
        assert agent.snapshot() == before
        assert client.plugin("greeter").get("current") is None


def test_passing_precheck_sees_the_release_dir(make_agent, build_plugin):
    agent = make_agent(plugins=_plugins_with_precheck(
        '["test", "-f", "{release_dir}/files/plugin.py"]'))
    release = build_plugin("1.0.0")
    with agent.client() as client:
        client.upload(release.manifest)
        assert client.activate("greeter", "1.0.0")["result"] == "activated"
