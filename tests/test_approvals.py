"""Approvals are bound to name, version, digest, stage and nodes, and expire."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hotrelease.errors import ExpiredError, IdentityMismatchError, SignatureError
from hotrelease.trust.approvals import Approval, verify_signed_approval
from hotrelease.trust.keys import load_private_key, load_public_key

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
DIGEST = "a" * 64


def approval(**changes):
    base = dict(name="greeter", version="1.1.0", bundle_sha256=DIGEST, stage="wave-1",
                approved_by="alice", approved_at=NOW, expires=NOW + timedelta(days=1),
                nodes=("node-01", "node-02"))
    base.update(changes)
    return Approval(**base)


@pytest.fixture
def signer(make_key):
    key = make_key("approver")
    public = load_public_key(key.public)
    return load_private_key(key.private), {public.keyid: public}


def check(doc, envelope, trusted, **overrides):
    args = dict(trusted=trusted, threshold=1, name="greeter", version="1.1.0",
                bundle_sha256=DIGEST, stage="wave-1", now=NOW, node="node-01")
    args.update(overrides)
    return verify_signed_approval(doc, envelope, **args)


def test_valid_approval_verifies(signer):
    private, trusted = signer
    a = approval()
    assert check(a.to_dict(), a.sign(private), trusted) == a


@pytest.mark.parametrize("overrides, error, text", [
    ({"bundle_sha256": "b" * 64}, IdentityMismatchError, "another bundle digest"),
    ({"stage": "all"}, IdentityMismatchError, "not 'all'"),
    ({"version": "1.2.0"}, IdentityMismatchError, "not greeter@1.2.0"),
    ({"node": "node-09"}, IdentityMismatchError, "does not name node"),
    ({"now": NOW + timedelta(days=2)}, ExpiredError, "expired"),
])
def test_approval_binding_refusals(signer, overrides, error, text):
    private, trusted = signer
    a = approval()
    with pytest.raises(error, match=text):
        check(a.to_dict(), a.sign(private), trusted, **overrides)


def test_edited_approval_fails_signature(signer):
    private, trusted = signer
    a = approval()
    envelope = a.sign(private)
    doc = a.to_dict()
    doc["nodes"] = ["node-01", "node-02", "node-03"]
    with pytest.raises(SignatureError):
        check(doc, envelope, trusted)


def test_approval_by_unknown_key_is_refused(signer, make_key):
    _, trusted = signer
    stranger = load_private_key(make_key("stranger").private)
    a = approval()
    with pytest.raises(SignatureError, match="untrusted"):
        check(a.to_dict(), a.sign(stranger), trusted)
