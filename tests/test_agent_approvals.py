"""Stage approvals are recorded in the agent's history (the fleet is the ledger); with
approver keys configured the agent verifies them itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hotrelease.errors import ExpiredError, IdentityMismatchError, SignatureError


def approval(release_sha: str = "a" * 64, *, name: str = "greeter", hours: int = 4):
    from hotrelease.trust.approvals import Approval

    now = datetime.now(UTC).replace(microsecond=0)
    return Approval(name, "1.1.0", release_sha, "wave-1", "alice", now - timedelta(minutes=1),
                    now + timedelta(hours=hours), ("node-1",))


def sign(doc, key_path):
    from hotrelease.trust.keys import load_private_key

    return doc.sign(load_private_key(key_path)).to_dict()


def test_unsigned_approval_is_recorded_as_unverified(make_agent) -> None:
    agent = make_agent()
    doc = approval()
    answer = agent.client().post_approval("greeter", doc.to_dict(), None)
    assert answer == {"status": "recorded", "name": "greeter", "stage": "wave-1",
                      "verified": False}
    record = agent.client().history("greeter")[-1]
    assert record["action"] == "approval" and record["approval"] == doc.to_dict()
    assert record["who"] == "ci" and record["verified"] is False


@pytest.fixture
def strict(make_agent, make_key):
    approver = make_key("approver")
    agent = make_agent(approval_keys=[approver.public])
    agent.approver = approver
    return agent


@pytest.mark.parametrize("case,error", [("unsigned", SignatureError),
                                        ("wrong key", SignatureError),
                                        ("other plugin", IdentityMismatchError),
                                        ("expired", ExpiredError)])
def test_bad_approvals_are_refused_when_approver_keys_are_set(strict, make_key, case,
                                                              error) -> None:
    doc = approval(name="other" if case == "other plugin" else "greeter",
                   hours=-1 if case == "expired" else 4)
    envelope = None if case == "unsigned" else sign(
        doc, make_key("stranger").private if case == "wrong key" else strict.approver.private)
    before, n = strict.snapshot(), len(strict.history())
    with pytest.raises(error):
        strict.client().post_approval("greeter", doc.to_dict(), envelope)
    assert strict.snapshot() == before
    assert strict.history()[-1]["result"] == "refused" and len(strict.history()) == n + 1
    good = approval()  # twin
    answer = strict.client().post_approval("greeter", good.to_dict(),
                                           sign(good, strict.approver.private))
    assert answer["verified"] is True
    assert strict.history()[-1]["verified"] is True
