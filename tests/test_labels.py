"""Security labels: every refusal has a passing twin; a refused label is reported with its
reason and the update is not treated as security."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import semver

from hotrelease.errors import ManifestFormatError
from hotrelease.gate.classify import SecurityClaim, check_label, classify
from hotrelease.gate.inputs import load_label_claim
from hotrelease.trust.keys import MANIFEST_TYPE, Envelope, load_private_key, load_trusted
from hotrelease.trust.labels import make_label, save_label, sign_label

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
DIGEST = "ab" * 32
BINDING = {"name": "greeter", "version": "1.2.1", "bundle_sha256": DIGEST}


@pytest.fixture
def security_key(make_key):
    return make_key("security")


@pytest.fixture
def signed(security_key):
    label = make_label(advisory="CVE-2026-1234", severity="high", now=NOW, expires_days=7,
                       **BINDING)
    envelope, _ = sign_label(label, load_private_key(security_key.private))
    return label, envelope


def problem_of(claim: SecurityClaim) -> str:
    """The reason of a claim the test expects refused (`problem` is None only when valid)."""
    assert claim.problem is not None
    return claim.problem


def check(label_dict, envelope, trusted, *, now=NOW, threshold=1, **binding):
    return check_label(label_dict, envelope, where="label.json", trusted=trusted,
                       threshold=threshold, now=now, **{**BINDING, **binding})


def test_valid_label_is_accepted(signed, security_key) -> None:
    label, envelope = signed
    claim = check(label.to_dict(), envelope, load_trusted([security_key.public]))
    assert claim.valid and claim.signed and claim.advisory == "CVE-2026-1234"
    assert claim.label_digest and len(claim.label_digest) == 64
    c = classify(semver.Version.parse("1.2.1"), semver.Version.parse("1.2.0"), claims=[claim])
    assert c.release_class == "security"


def test_unknown_key_refused(signed, make_key, security_key) -> None:
    label, envelope = signed
    other = load_trusted([make_key("other").public])
    claim = check(label.to_dict(), envelope, other)
    assert not claim.valid and "untrusted key" in claim.problem
    c = classify(semver.Version.parse("1.2.1"), semver.Version.parse("1.2.0"), claims=[claim])
    assert c.release_class == "patch"
    assert any("untrusted key" in r.message and "not treated as security" in r.message
               for r in c.reasons)
    assert check(label.to_dict(), envelope, load_trusted([security_key.public])).valid


@pytest.mark.parametrize("binding,problem", [
    ({"name": "other"}, "is for plugin 'greeter'"),
    ({"version": "1.2.2"}, "is for version 1.2.1"),
    ({"bundle_sha256": "cd" * 32}, "another bundle digest"),
])
def test_label_for_another_release_refused(signed, security_key, binding, problem) -> None:
    label, envelope = signed
    trusted = load_trusted([security_key.public])
    claim = check(label.to_dict(), envelope, trusted, **binding)
    assert not claim.valid and problem in claim.problem
    assert check(label.to_dict(), envelope, trusted).valid


def test_expired_label_refused(signed, security_key) -> None:
    label, envelope = signed
    trusted = load_trusted([security_key.public])
    claim = check(label.to_dict(), envelope, trusted, now=label.expires)
    assert not claim.valid and "expired" in claim.problem
    assert check(label.to_dict(), envelope, trusted,
                 now=label.expires - timedelta(seconds=1)).valid


def test_tampered_signature_refused(signed, security_key) -> None:
    label, envelope = signed
    trusted = load_trusted([security_key.public])
    raw = bytearray(envelope.signatures[0].sig)
    raw[0] ^= 0x01
    tampered = Envelope.from_dict({**envelope.to_dict(), "signatures": [
        {"keyid": envelope.signatures[0].keyid, "sig": base64.b64encode(bytes(raw)).decode()}]})
    claim = check(label.to_dict(), tampered, trusted)
    assert not claim.valid and "does not verify" in claim.problem
    assert check(label.to_dict(), envelope, trusted).valid


def test_tampered_label_document_refused(signed, security_key) -> None:
    label, envelope = signed
    trusted = load_trusted([security_key.public])
    edited = {**label.to_dict(), "severity": "low"}
    claim = check(edited, envelope, trusted)
    assert not claim.valid and "does not verify" in claim.problem


def test_release_role_signature_is_not_a_label(signed, security_key) -> None:
    label, _ = signed
    wrong_role = Envelope(MANIFEST_TYPE)
    wrong_role.add_signature(label.canonical_bytes(), load_private_key(security_key.private))
    claim = check(label.to_dict(), wrong_role, load_trusted([security_key.public]))
    assert not claim.valid and "envelope is for" in claim.problem


def test_threshold_not_met(signed, security_key, make_key) -> None:
    label, envelope = signed
    second = make_key("second")
    trusted = load_trusted([security_key.public, second.public])
    claim = check(label.to_dict(), envelope, trusted, threshold=2)
    assert not claim.valid and "threshold is 2" in claim.problem
    envelope2, _ = sign_label(label, load_private_key(second.private), envelope)
    assert check(label.to_dict(), envelope2, trusted, threshold=2).valid


def test_no_security_keys_or_no_digest(signed, security_key) -> None:
    label, envelope = signed
    assert "no security keys configured" in check(label.to_dict(), envelope, {}).problem
    trusted = load_trusted([security_key.public])
    assert "digest is unknown" in check(label.to_dict(), envelope, trusted,
                                        bundle_sha256=None).problem


def test_make_label_validates() -> None:
    with pytest.raises(ManifestFormatError, match="severity"):
        make_label(advisory="CVE-2026-1234", severity="urgent", now=NOW, expires_days=7,
                   **BINDING)
    with pytest.raises(ManifestFormatError, match="advisory"):
        make_label(advisory="x", severity="high", now=NOW, expires_days=7, **BINDING)
    with pytest.raises(ManifestFormatError, match="bundle_sha256"):
        make_label(advisory="CVE-2026-1234", severity="high", now=NOW, expires_days=7,
                   **{**BINDING, "bundle_sha256": "XYZ"})


def test_label_files_roundtrip_and_broken_files(signed, security_key, tmp_path: Path) -> None:
    label, envelope = signed
    path = tmp_path / "greeter-1.2.1.security.json"
    save_label(label, envelope, path)
    kwargs: dict[str, Any] = dict(trusted=load_trusted([security_key.public]), threshold=1,
                                  now=NOW, **BINDING)
    assert load_label_claim(path, **kwargs).valid
    Path(f"{path}.sig").unlink()
    assert "signature file not found" in problem_of(load_label_claim(path, **kwargs))
    path.write_text("{not json")
    assert problem_of(load_label_claim(path, **kwargs)).startswith("not valid JSON")
    assert "cannot read" in problem_of(load_label_claim(tmp_path / "missing.json", **kwargs))
    path.write_text(json.dumps([1, 2]))
    envelope.save(Path(f"{path}.sig"))
    assert load_label_claim(path, **kwargs).problem == "not a label document"


def test_label_file_with_a_duplicated_key_is_not_a_security_claim(signed, security_key,
                                                                  tmp_path: Path) -> None:
    """A first occurrence added in transit leaves the signature valid for a last-wins reader
    (the canonical form is unchanged) while a first-wins reader sees another advisory."""
    label, envelope = signed
    path = tmp_path / "greeter-1.2.1.security.json"
    save_label(label, envelope, path)
    kwargs: dict[str, Any] = dict(trusted=load_trusted([security_key.public]), threshold=1,
                                  now=NOW, **BINDING)
    assert load_label_claim(path, **kwargs).valid  # the twin
    text = path.read_text()
    path.write_text(text.replace("{", '{"advisory": "CVE-2000-0001", ', 1))
    claim = load_label_claim(path, **kwargs)
    assert not claim.valid
    assert "duplicate key 'advisory'" in problem_of(claim)
