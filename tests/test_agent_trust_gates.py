"""Gates an attacker with a CI token must not walk around (issue 11, items 6-8): a rollback
is no way past the approval gate, trust and expiry are checked again at every switch, and the
security floor fails closed. Each refusal changes nothing but history; each has a twin."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from conftest import craft_release, hosted_agent
from test_agent_activate import make_label
from test_agent_gates import approval_for, gated_agent

from hotrelease.errors import HotreleaseError, PolicyError


def refused(agent, call, code: str) -> HotreleaseError:
    """`call(client)` is refused with `code`, changes nothing and is recorded."""
    before, n = agent.snapshot(), len(agent.history())
    with agent.client() as client, pytest.raises(HotreleaseError) as info:
        call(client)
    assert info.value.code == code, info.value
    assert agent.snapshot() == before, "a refusal changes nothing on the node"
    records = agent.history()
    assert len(records) == n + 1 and records[-1]["result"] == "refused"
    assert records[-1]["code"] == code
    return info.value


def set_release_keys(agent, keys) -> None:
    text = agent.config.read_text()
    start = text.index("release_keys = [")
    end = text.index("]", start)
    listed = ", ".join(f'"{k}"' for k in keys)
    agent.config.write_text(text[:start] + f"release_keys = [{listed}" + text[end:])


def restart(agent) -> None:
    agent.stop()
    agent.start()


# --- 6. rollback is no way around the approval gate ---------------------------------------


@pytest.fixture
def approver(make_key):
    return make_key("approver")


def test_rollback_to_a_version_never_run_needs_an_approval(make_agent, build_plugin,
                                                          approver) -> None:
    agent = gated_agent(make_agent, approver.public)
    first, second, third = (build_plugin(v) for v in ("1.0.0", "1.1.0", "1.2.0"))
    older = build_plugin("0.9.0")
    with agent.client() as client:
        for release in (first, second, third, older):
            client.upload(release.manifest)
        client.activate("greeter", "1.0.0", approval=approval_for(first, approver))
        client.activate("greeter", "1.1.0", approval=approval_for(second, approver))
    # "rolling back" forward to a stored, never approved, never run version
    refused(agent, lambda c: c.rollback("greeter", "1.2.0"), "approval_required")
    # ... or back to one stored but never run
    refused(agent, lambda c: c.rollback("greeter", "0.9.0"), "approval_required")
    # an approval that is not for this build does not do either
    refused(agent, lambda c: c.rollback("greeter", "1.2.0",
                                        approval=approval_for(first, approver)),
            "identity_mismatch")
    with agent.client() as client:
        # twins: back to what ran here needs none; a never-run version with its approval
        assert client.rollback("greeter", "1.0.0")["current"] == "1.0.0"
        result = client.rollback("greeter", "1.2.0", approval=approval_for(third, approver))
        assert result["result"] == "activated" and result["current"] == "1.2.0"
        # and 1.1.0 ran before: going back to it again needs no approval
        assert client.rollback("greeter", "1.1.0")["current"] == "1.1.0"


def test_without_approver_keys_a_rollback_to_any_stored_version_works(make_agent,
                                                                      build_plugin) -> None:
    agent = make_agent()
    with agent.client() as client:
        for version in ("1.0.0", "1.1.0", "1.2.0"):
            client.upload(build_plugin(version).manifest)
        client.activate("greeter", "1.1.0")
        assert client.rollback("greeter", "1.0.0")["current"] == "1.0.0"
        assert client.rollback("greeter", "1.2.0")["current"] == "1.2.0"


# --- 7. trust and expiry again at every switch ------------------------------------------------


@pytest.fixture
def rotation(make_agent, make_key):
    """An agent trusting two release keys, the first of which is about to be rotated out."""
    old_key, new_key = make_key("retired"), make_key("current")
    return make_agent(release_keys=[old_key.public, new_key.public]), old_key, new_key


def test_a_release_whose_key_was_removed_is_not_activated(rotation, build_plugin,
                                                          tmp_path) -> None:
    agent, old_key, new_key = rotation
    stale = build_plugin("1.1.0", key=old_key, out=tmp_path / "stale")
    fresh = build_plugin("1.2.0", key=new_key, out=tmp_path / "fresh")
    with agent.client() as client:
        client.upload(stale.manifest)
        client.upload(fresh.manifest)
    set_release_keys(agent, [new_key.public])  # the old key is rotated out
    restart(agent)
    error = refused(agent, lambda c: c.activate("greeter", "1.1.0"), "bad_signature")
    assert "1.1.0" in str(error)
    with agent.client() as client:  # twin: signed by a key still trusted
        assert client.activate("greeter", "1.2.0")["result"] == "activated"


def test_a_rollback_to_a_release_whose_key_was_removed_is_refused(rotation, build_plugin,
                                                                  tmp_path) -> None:
    agent, old_key, new_key = rotation
    with agent.client() as client:
        for version, key in (("1.0.0", old_key), ("1.1.0", new_key), ("1.2.0", new_key)):
            release = build_plugin(version, key=key, out=tmp_path / version)
            client.upload(release.manifest)
            client.activate("greeter", version)
    set_release_keys(agent, [new_key.public])
    restart(agent)
    refused(agent, lambda c: c.rollback("greeter", "1.0.0"), "bad_signature")
    with agent.client() as client:  # twin
        assert client.rollback("greeter", "1.1.0")["current"] == "1.1.0"


def short_lived(base, out, seconds: float):
    """`base` re-signed with its manifest expiring `seconds` from now."""
    expires = (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return craft_release(base, out, mutate=lambda doc: doc.update(expires=expires))


def wait_expired(crafted) -> None:
    expires = json.loads(crafted.manifest.read_bytes())["expires"]
    moment = datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    delay = (moment - datetime.now(UTC)).total_seconds() + 0.2
    assert delay < 10
    time.sleep(max(delay, 0))


def test_a_release_that_expired_after_it_was_stored_is_not_activated(make_agent, build_plugin,
                                                                      tmp_path) -> None:
    agent = make_agent()
    soon = short_lived(build_plugin("1.1.0"), tmp_path / "soon", 3)
    with agent.client() as client:
        client.upload(soon.manifest, soon.signature, soon.bundle)
        client.upload(build_plugin("1.2.0").manifest)
    wait_expired(soon)
    refused(agent, lambda c: c.activate("greeter", "1.1.0"), "expired")
    # the override is for rollbacks to what ran here, never for an activation
    refused(agent, lambda c: c.rollback("greeter", "1.1.0", allow_expired=True),
            "bad_request")
    with agent.client() as client:  # twin: not expired
        assert client.activate("greeter", "1.2.0")["result"] == "activated"


def test_rollback_to_an_expired_release_needs_the_recorded_override(make_agent, build_plugin,
                                                                    tmp_path) -> None:
    agent = make_agent()
    soon = short_lived(build_plugin("1.0.0"), tmp_path / "soon", 4)
    with agent.client() as client:
        client.upload(soon.manifest, soon.signature, soon.bundle)
        client.activate("greeter", "1.0.0")
        client.upload(build_plugin("1.1.0").manifest)
        client.activate("greeter", "1.1.0")
    wait_expired(soon)
    error = refused(agent, lambda c: c.rollback("greeter"), "expired")
    assert "allow_expired" in str(error)
    with agent.client() as client:
        result = client.rollback("greeter", allow_expired=True)
    assert result["result"] == "activated" and result["current"] == "1.0.0"
    record = agent.history()[-1]
    assert record["action"] == "rollback" and record["result"] == "activated"
    assert record["override"] == "allow_expired"
    assert record["expired"] == json.loads(soon.manifest.read_bytes())["expires"]


def test_automatic_rollback_to_a_release_no_longer_trusted_stays_and_flags(
        make_agent, build_plugin, make_key, tmp_path) -> None:
    old_key, new_key = make_key("retired"), make_key("current")
    agent = hosted_agent(make_agent)
    set_release_keys(agent, [old_key.public, new_key.public])
    restart(agent)
    good = build_plugin("1.0.0", key=old_key, out=tmp_path / "good")
    broken = build_plugin("1.1.0", key=new_key, out=tmp_path / "broken",
                          env={"GREETER_BROKEN": "1"})
    with agent.client() as client:
        client.upload(good.manifest)
        client.activate("greeter", "1.0.0")
        client.upload(broken.manifest)
    set_release_keys(agent, [new_key.public])
    restart(agent)
    with agent.client() as client:
        result = client.activate("greeter", "1.1.0")
        assert result["result"] == "failed" and "no longer verifies" in result["reason"]
        assert client.plugin("greeter")["state"] == "unhealthy"
    assert agent.history()[-1]["code"] == "bad_signature"


def test_automatic_rollback_to_an_expired_release_goes_back_and_says_so(
        make_agent, build_plugin, tmp_path) -> None:
    agent = hosted_agent(make_agent)
    soon = short_lived(build_plugin("1.0.0"), tmp_path / "soon", 4)
    broken = build_plugin("1.1.0", out=tmp_path / "broken", env={"GREETER_BROKEN": "1"})
    with agent.client() as client:
        client.upload(soon.manifest, soon.signature, soon.bundle)
        client.activate("greeter", "1.0.0")
        client.upload(broken.manifest)
        wait_expired(soon)
        result = client.activate("greeter", "1.1.0")
        assert result["result"] == "rolled_back" and result["current"] == "1.0.0"
    record = agent.history()[-1]
    assert record["result"] == "rolled_back"
    assert record["rollback_target_expired"] == json.loads(soon.manifest.read_bytes())["expires"]


# --- 8. the security floor fails closed -------------------------------------------------------


@pytest.fixture
def floored(make_agent, build_plugin, make_key):
    security = make_key("security")
    agent = make_agent(security_keys=[security.public])
    releases = {v: build_plugin(v) for v in ("1.0.0", "1.1.0", "1.2.0")}
    with agent.client() as client:
        for release in releases.values():
            client.upload(release.manifest)
        client.activate("greeter", "1.0.0")
        client.activate("greeter", "1.1.0")
        label, envelope = make_label(releases["1.0.0"], security)  # floor 1.0.0
        assert client.post_label("greeter", label, envelope)["floor"] == "1.0.0"
    agent.security, agent.releases = security, releases
    return agent


def advisory_files(agent):
    return sorted((agent.data_dir / "plugins" / "greeter" / "advisories").glob("*.json"))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no version", "unreadable"])
def test_an_unreadable_advisory_refuses_every_switch(floored, damage) -> None:
    (path,) = advisory_files(floored)
    if damage == "garbage":
        path.write_bytes(b"\x00\x01 not json")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "no version":
        doc = json.loads(path.read_bytes())
        del doc["label"]["version"]
        path.write_text(json.dumps(doc))
    else:
        path.unlink()
        path.mkdir()  # reading it fails with an OS error
    error = refused(floored, lambda c: c.activate("greeter", "1.2.0"), "advisory_unreadable")
    assert path.name in str(error)
    refused(floored, lambda c: c.rollback("greeter"), "advisory_unreadable")
    state = floored.client().plugin("greeter")  # the state still answers, and says why
    assert state["security_floor"] is None and path.name in state["security_floor_problem"]


def test_readable_advisories_let_switches_through(floored) -> None:
    with floored.client() as client:  # the twin of the test above
        assert client.activate("greeter", "1.2.0")["result"] == "activated"
        assert client.rollback("greeter")["current"] == "1.1.0"


def test_an_upload_below_the_floor_is_refused(floored, build_plugin, tmp_path) -> None:
    with floored.client() as client:
        label, envelope = make_label(floored.releases["1.2.0"], floored.security,
                                     advisory="CVE-2026-4242")
        assert client.post_label("greeter", label, envelope)["floor"] == "1.2.0"
    below = build_plugin("1.1.5", out=tmp_path / "below")
    error = refused(floored, lambda c: c.upload(below.manifest), "below_security_floor")
    assert "1.2.0" in str(error)
    assert not (floored.data_dir / "releases" / "greeter" / "1.1.5").exists()
    with floored.client() as client:  # twin: at or above the floor is stored
        assert client.upload(build_plugin("1.2.1", out=tmp_path / "ok").manifest)[
            "status"] == "stored"


def test_an_advisory_arriving_beside_an_unreadable_one_is_kept(floored) -> None:
    (path,) = advisory_files(floored)
    path.write_bytes(b"{")
    label, envelope = make_label(floored.releases["1.2.0"], floored.security,
                                 advisory="CVE-2026-4243")
    with floored.client() as client:
        answer = client.post_label("greeter", label, envelope)
    assert answer["status"] == "recorded" and answer["floor"] is None
    assert "not an advisory record" in answer["floor_problem"]
    assert len(advisory_files(floored)) == 2
    with pytest.raises(PolicyError) as info:  # the floor is still unknown
        floored.client().activate("greeter", "1.2.0")
    assert info.value.code == "advisory_unreadable"
