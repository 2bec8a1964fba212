"""Activation, health checks, automatic rollback, rollback, downgrade and security floor,
against a real agent driving the real Python plugin host."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from conftest import hosted_agent, wait_until

from hotrelease.errors import PolicyError


@pytest.fixture
def hosted(make_agent, build_plugin):
    agent = hosted_agent(make_agent)
    client = agent.client()
    for version in ("1.0.0", "1.1.0"):
        assert client.upload(build_plugin(version).manifest)["status"] == "stored"
    assert client.activate("greeter", "1.0.0")["result"] == "activated"
    return agent


def assert_consistent(agent, version: str | None) -> None:
    state = agent.client().plugin("greeter")
    assert state["current"] == version
    assert state["current_link"] == version
    assert not (agent.data_dir / "plugins" / "greeter" / "journal.json").exists()


def test_activate_switches_host_and_keeps_session_state(hosted) -> None:
    host, client = hosted.host, hosted.client()
    assert host.play("ann")["visits"] == 1
    result = client.activate("greeter", "1.1.0", stage="canary", release_id="greeter@1.1.0",
                             pipeline_url="https://ci.example/p/1",
                             approval={"note": "recorded only"})
    assert result["result"] == "activated" and result["from"] == "1.0.0"
    assert host.health()["version"] == "1.1.0"
    reply = host.play("ann")
    assert reply["version"] == "1.1.0" and reply["visits"] == 2  # state survived the reload
    state = client.plugin("greeter")
    assert (state["current"], state["previous"], state["state"]) == ("1.1.0", "1.0.0", "active")
    assert state["activated_at"] and state["health"]["ok"] is True
    record = client.history("greeter")[-1]
    assert record["action"] == "activate" and record["result"] == "activated"
    assert (record["who"], record["stage"], record["pipeline_url"]) == (
        "ci", "canary", "https://ci.example/p/1")
    assert record["approval"] == {"note": "recorded only"}
    assert_consistent(hosted, "1.1.0")


def test_reload_by_signal_to_pid_file(make_agent, build_plugin) -> None:
    agent = hosted_agent(make_agent, reload="signal")
    client = agent.client()
    client.upload(build_plugin("1.0.0").manifest)
    client.upload(build_plugin("1.1.0").manifest)
    assert client.activate("greeter", "1.0.0")["result"] == "activated"
    assert client.activate("greeter", "1.1.0")["result"] == "activated"
    assert agent.host.health()["version"] == "1.1.0"


def test_failing_health_rolls_back(hosted, build_plugin, tmp_path) -> None:
    client = hosted.client()
    broken = build_plugin("1.2.0", out=tmp_path / "broken", env={"GREETER_BROKEN": "1"})
    client.upload(broken.manifest)
    result = client.activate("greeter", "1.2.0")
    assert result["result"] == "rolled_back" and result["current"] == "1.0.0"
    assert "health check failed" in result["reason"]
    assert hosted.host.health()["version"] == "1.0.0"  # previous version serving again
    state = client.plugin("greeter")
    assert state["state"] == "rolled_back" and state["last_failure"]["version"] == "1.2.0"
    record = client.history("greeter")[-1]
    assert record["result"] == "rolled_back" and "healthy" in record["reason"]
    assert_consistent(hosted, "1.0.0")
    # twin: a healthy release activates
    assert client.activate("greeter", "1.1.0")["result"] == "activated"


def test_hanging_health_check_fails_at_its_deadline(make_agent, build_plugin) -> None:
    agent = hosted_agent(make_agent, health='health = { command = ["sleep", "30"], '
                                            "timeout = 0.5, retries = 0 }")
    client = agent.client()
    client.upload(build_plugin("1.0.0").manifest)
    result = client.activate("greeter", "1.0.0", timeout=25)
    assert result["result"] == "rolled_back" and result["current"] is None
    assert "did not finish within 0.5s" in result["reason"]
    assert_consistent(agent, None)
    assert client.plugin("greeter")["state"] == "empty"


def test_downgrade_refused_but_rollback_allowed(hosted) -> None:
    client = hosted.client()
    client.activate("greeter", "1.1.0")
    before, n = hosted.snapshot(), len(hosted.history())
    with pytest.raises(PolicyError) as info:
        client.activate("greeter", "1.0.0")
    assert info.value.code == "downgrade"
    assert hosted.snapshot() == before
    assert hosted.history()[-1]["code"] == "downgrade" and len(hosted.history()) == n + 1
    # twin: the rollback endpoint may go back to a stored version
    result = client.rollback("greeter", reason="bad numbers")
    assert result["result"] == "activated" and result["version"] == "1.0.0"
    assert hosted.host.health()["version"] == "1.0.0"
    assert hosted.history()[-1]["action"] == "rollback"
    assert_consistent(hosted, "1.0.0")


def test_rollback_to_named_version_and_errors(hosted) -> None:
    client = hosted.client()
    from hotrelease.errors import AgentError

    with pytest.raises(AgentError) as info:
        client.rollback("greeter")  # 1.0.0 is the first activation: no previous
    assert info.value.code == "nothing_to_roll_back"
    with pytest.raises(AgentError) as info:
        client.rollback("greeter", "9.9.9")
    assert info.value.code == "not_stored"
    client.activate("greeter", "1.1.0")
    assert client.rollback("greeter", "1.0.0")["version"] == "1.0.0"
    assert client.activate("greeter", "1.0.0")["result"] == "unchanged"


def test_activate_unknown_version_is_404(hosted) -> None:
    from hotrelease.errors import AgentError

    before = hosted.snapshot()
    with pytest.raises(AgentError) as info:
        hosted.client().activate("greeter", "7.0.0")
    assert info.value.code == "not_stored" and info.value.status == 404
    assert hosted.snapshot() == before
    assert hosted.history()[-1]["code"] == "not_stored"


def test_tampered_stored_release_is_refused(hosted) -> None:
    target = hosted.data_dir / "releases" / "greeter" / "1.1.0" / "files" / "greetings.txt"
    target.chmod(0o644)
    text = target.read_text()
    target.write_text(text.replace("Hello", "Hallo"))  # same size, other bytes
    before = hosted.snapshot()
    from hotrelease.errors import DigestMismatchError

    with pytest.raises(DigestMismatchError):
        hosted.client().activate("greeter", "1.1.0")
    assert hosted.snapshot() == before
    assert hosted.history()[-1]["code"] == "digest_mismatch"


def test_two_concurrent_activations_one_wins(make_agent, build_plugin, tmp_path) -> None:
    gate = tmp_path / "gate"
    agent = hosted_agent(make_agent, health=(
        f'health = {{ command = ["sh", "-c", "while [ ! -e {gate} ]; do sleep 0.02; done"], '
        "timeout = 20, retries = 0, min_healthy_seconds = 0 }"))
    client = agent.client()
    client.upload(build_plugin("1.0.0").manifest)
    client.upload(build_plugin("1.1.0").manifest)
    results: dict[str, object] = {}

    def first() -> None:
        results["first"] = agent.client().activate("greeter", "1.0.0")

    thread = threading.Thread(target=first)
    thread.start()
    try:
        journal = agent.data_dir / "plugins" / "greeter" / "journal.json"
        wait_until(journal.exists, 20, "the first activation to start")
        from hotrelease.errors import AgentError

        with pytest.raises(AgentError) as info:
            client.activate("greeter", "1.1.0")
        assert info.value.code == "activation_in_progress" and info.value.status == 409
    finally:
        gate.touch()
        thread.join(timeout=30)
    assert results["first"]["result"] == "activated"  # type: ignore[index]
    assert_consistent(agent, "1.0.0")
    records = agent.history()
    assert [r["result"] for r in records if r["action"] == "activate"] == [
        "refused", "activated"]


# --- security floor -----------------------------------------------------------------------------


def make_label(release, key, *, version=None, expires_days=30, advisory="CVE-2026-1234"):
    import hashlib

    from hotrelease.trust.keys import SECURITY_LABEL_TYPE, Envelope, load_private_key
    from hotrelease.trust.labels import SecurityLabel

    now = datetime.now(UTC).replace(microsecond=0)
    label = SecurityLabel("greeter", version or release.version,
                          hashlib.sha256(release.bundle.read_bytes()).hexdigest(), advisory,
                          "high", now - timedelta(days=1), now + timedelta(days=expires_days))
    envelope = Envelope(SECURITY_LABEL_TYPE)
    envelope.add_signature(label.canonical_bytes(), load_private_key(key.private))
    return label.to_dict(), envelope.to_dict()


@pytest.fixture
def floored(make_agent, build_plugin, make_key):
    security = make_key("security")
    agent = hosted_agent(make_agent, security_keys=[security.public])
    client = agent.client()
    releases = {v: build_plugin(v) for v in ("1.0.0", "1.1.0", "1.2.0")}
    for release in releases.values():
        client.upload(release.manifest)
    client.activate("greeter", "1.0.0")
    agent.security, agent.releases = security, releases
    return agent


def test_security_floor_refuses_lower_versions(floored) -> None:
    client = floored.client()
    label, envelope = make_label(floored.releases["1.2.0"], floored.security)
    assert client.post_label("greeter", label, envelope)["floor"] == "1.2.0"
    before, n = floored.snapshot(), len(floored.history())
    with pytest.raises(PolicyError) as info:
        client.activate("greeter", "1.1.0")
    assert info.value.code == "below_security_floor"
    assert floored.snapshot() == before and len(floored.history()) == n + 1
    assert client.activate("greeter", "1.2.0")["result"] == "activated"  # twin
    with pytest.raises(PolicyError) as info:  # also the rollback endpoint
        client.rollback("greeter")
    assert info.value.code == "below_security_floor"
    assert_consistent(floored, "1.2.0")


def test_security_floor_survives_restart_and_never_drops(floored) -> None:
    client = floored.client()
    high, env_high = make_label(floored.releases["1.2.0"], floored.security)
    low, env_low = make_label(floored.releases["1.1.0"], floored.security,
                              advisory="CVE-2026-9999")
    client.post_label("greeter", high, env_high)
    assert client.post_label("greeter", low, env_low)["floor"] == "1.2.0"
    floored.stop()
    floored.start()
    assert floored.client().plugin("greeter")["security_floor"] == "1.2.0"


def test_automatic_rollback_never_goes_below_the_floor(floored, build_plugin, tmp_path) -> None:
    client = floored.client()
    broken = build_plugin("1.3.0", out=tmp_path / "broken", env={"GREETER_BROKEN": "1"})
    client.upload(broken.manifest)
    label, envelope = make_label(broken, floored.security)  # 1.0.0 (current) is vulnerable
    client.post_label("greeter", label, envelope)
    result = client.activate("greeter", "1.3.0")
    assert result["result"] == "failed" and "security floor" in result["reason"]
    assert_consistent(floored, "1.3.0")
    assert client.plugin("greeter")["state"] == "unhealthy"
    assert floored.history()[-1]["code"] == "below_security_floor"


@pytest.mark.parametrize("case", ["release key", "expired", "other bundle"])
def test_bad_labels_are_refused(floored, case, build_plugin, tmp_path) -> None:
    from hotrelease.errors import AgentError, VerificationError

    release = floored.releases["1.2.0"]
    if case == "release key":  # signed, but not by the security team
        label, envelope = make_label(release, release.key)
    elif case == "expired":
        label, envelope = make_label(release, floored.security, expires_days=-1)
    else:  # bound to a rebuilt bundle, not the one stored here
        rebuilt = build_plugin("1.2.0", out=tmp_path / "re", env={"GREETER_BROKEN": "1"})
        label, envelope = make_label(rebuilt, floored.security)
    before, n = floored.snapshot(), len(floored.history())
    with pytest.raises((VerificationError, AgentError)):
        floored.client().post_label("greeter", label, envelope)
    assert floored.snapshot() == before
    assert floored.history()[-1]["result"] == "refused" and len(floored.history()) == n + 1
    good, good_env = make_label(release, floored.security)  # twin
    assert floored.client().post_label("greeter", good, good_env)["status"] == "recorded"
