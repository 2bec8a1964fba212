"""The ledger holds everything (issue 11, item 10): after a kill at any point, every release in
releases/ has a history record, and a kill during an automatic rollback keeps the failure
that caused it."""

from __future__ import annotations

from test_agent_crash import assert_clean, crash_during, node  # noqa: F401 - the fixture


def stored_records(agent, version: str) -> list[dict]:
    return [r for r in agent.history() if r.get("version") == version
            and r.get("result") == "stored"]


def test_kill_after_the_rename_leaves_no_release_the_history_never_mentions(node) -> None:  # noqa: F811
    release = node.releases["1.1.0"]
    crash_during(node, "upload.stored", lambda c: c.upload(release.manifest))
    assert (node.data_dir / "releases" / "greeter" / "1.1.0").is_dir()
    node.start()
    assert_clean(node, "1.0.0")
    assert node.client().plugin("greeter")["stored"] == ["1.0.0", "1.1.0"]
    (record,) = stored_records(node, "1.1.0")
    assert record["action"] == "recover" and record["who"] == "agent"
    assert record["release_id"] == "greeter@1.1.0"
    assert "no history record" in record["reason"]
    # every stored release is in the history, and recovery does not record it twice
    node.stop()
    node.start()
    for version in node.client().plugin("greeter")["stored"]:
        assert len(stored_records(node, version)) == 1, version
    # twin: the same upload is now known, and the release activates
    assert node.client().upload(release.manifest)["status"] == "unchanged"
    assert node.client().activate("greeter", "1.1.0")["result"] == "activated"


def test_kill_during_automatic_rollback_keeps_the_failure_that_caused_it(node) -> None:  # noqa: F811
    node.client().upload(node.releases["1.2.0"].manifest)  # fails its health check
    crash_during(node, "activate.rolling_back", lambda c: c.activate("greeter", "1.2.0"))
    node.start()
    assert_clean(node, "1.0.0")
    record = node.history()[-1]
    assert record["action"] == "recover" and record["result"] == "undone"
    assert "health check failed" in record["failure"]
    assert "health check failed" in record["reason"]
    state = node.client().plugin("greeter")
    assert state["last_failure"]["version"] == "1.2.0"
    assert "health check failed" in state["last_failure"]["reason"]
    # twin: a kill before the health verdict has no failure to carry
    node.client().upload(node.releases["1.1.0"].manifest)
    crash_during(node, "switch.swapped", lambda c: c.activate("greeter", "1.1.0"))
    node.start()
    record = node.history()[-1]
    assert record["result"] == "undone" and "failure" not in record
