"""Keys and envelopes: file modes, passphrases, keys from CI variables, role separation."""

from __future__ import annotations

import base64
import json
import stat

import pytest

from hotrelease.errors import EXIT_OK, EXIT_USAGE, KeyFileError, SignatureError
from hotrelease.trust.keys import (
    APPROVAL_TYPE,
    MANIFEST_TYPE,
    Envelope,
    load_private_key,
    load_public_key,
    verify_envelope,
)


def test_keygen_writes_private_key_0600_and_reports_key_id(cli, tmp_path):
    result = cli("keygen", "--out", tmp_path / "ci", "--json")
    assert result.code == EXIT_OK, result.stderr
    doc = json.loads(result.stdout)
    key_file = tmp_path / "ci.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert doc["keyid"] == load_public_key(tmp_path / "ci.pub").keyid
    assert len(doc["keyid"]) == 64


def test_keygen_refuses_to_overwrite(cli, tmp_path):
    assert cli("keygen", "--out", tmp_path / "k").code == EXIT_OK
    before = (tmp_path / "k.key").read_bytes()
    result = cli("keygen", "--out", tmp_path / "k")
    assert result.code == EXIT_USAGE and "already exists" in result.error_line
    assert (tmp_path / "k.key").read_bytes() == before


def test_passphrase_protected_key(cli, tmp_path, build_plugin):
    env = {"KEYPASS": "correct horse"}
    assert cli("keygen", "--out", tmp_path / "p", "--passphrase-env", "KEYPASS",
               env=env).code == EXIT_OK
    assert "ENCRYPTED" in (tmp_path / "p.key").read_text()
    release = build_plugin("1.0.0", sign=False)
    wrong = cli("sign", release.manifest, "--key", tmp_path / "p.key", "--passphrase-env",
                "KEYPASS", env={"KEYPASS": "s3cr3t-Guess"})
    assert wrong.code == EXIT_USAGE and "passphrase" in wrong.error_line
    assert "s3cr3t-Guess" not in wrong.stderr  # never echo a secret
    missing = cli("sign", release.manifest, "--key", tmp_path / "p.key")
    assert missing.code == EXIT_USAGE and "encrypted" in missing.error_line
    assert not release.signature.exists()
    good = cli("sign", release.manifest, "--key", tmp_path / "p.key", "--passphrase-env",
               "KEYPASS", env=env)
    assert good.code == EXIT_OK, good.stderr
    assert cli("verify", release.manifest, "--trusted", tmp_path / "p.pub").code == EXIT_OK


@pytest.mark.parametrize("encoding", ["pem", "base64"])
def test_key_from_environment_variable(cli, build_plugin, make_key, encoding):
    key = make_key("ci")
    pem = key.private.read_text()
    value = pem if encoding == "pem" else base64.b64encode(pem.encode()).decode()
    release = build_plugin("1.0.0", sign=False)
    result = cli("sign", release.manifest, env={"HOTRELEASE_SIGNING_KEY": value})
    assert result.code == EXIT_OK, result.stderr
    assert pem.splitlines()[1] not in result.stdout + result.stderr
    assert cli("verify", release.manifest, "--trusted", key.public).code == EXIT_OK


def test_garbage_key_variable_is_a_clear_error(cli, build_plugin):
    release = build_plugin("1.0.0", sign=False)
    result = cli("sign", release.manifest, "--key-env", "MYKEY", env={"MYKEY": "not-a-key!"})
    assert result.code == EXIT_USAGE and "$MYKEY" in result.error_line
    assert "not-a-key" not in result.stderr


def test_sign_without_any_key_is_a_usage_error(cli, build_plugin):
    release = build_plugin("1.0.0", sign=False)
    result = cli("sign", release.manifest, env={"HOTRELEASE_SIGNING_KEY": ""})
    assert result.code == EXIT_USAGE and "--key" in result.error_line


def test_sign_refuses_an_invalid_manifest(cli, make_key, tmp_path):
    key = make_key("k")
    bad = tmp_path / "x.manifest.json"
    bad.write_text('{"format": "something-else"}')
    result = cli("sign", bad, "--key", key.private)
    assert result.code != EXIT_OK
    assert not (tmp_path / "x.manifest.json.sig").exists()


def test_signature_for_one_role_does_not_verify_for_another(make_key):
    key = make_key("k")
    private = load_private_key(key.private)
    public = load_public_key(key.public)
    payload = b'{"stage":"all"}'
    envelope = Envelope(MANIFEST_TYPE)
    envelope.add_signature(payload, private)
    verify_envelope(envelope, payload, payload_type=MANIFEST_TYPE,
                    trusted={public.keyid: public}, threshold=1)
    relabelled = Envelope(APPROVAL_TYPE, envelope.signatures)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_envelope(relabelled, payload, payload_type=APPROVAL_TYPE,
                        trusted={public.keyid: public}, threshold=1)
    with pytest.raises(SignatureError, match="expected"):
        verify_envelope(envelope, payload, payload_type=APPROVAL_TYPE,
                        trusted={public.keyid: public}, threshold=1)


def test_public_key_file_must_be_ed25519(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    path = tmp_path / "ec.pub"
    path.write_bytes(other.public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(KeyFileError, match="Ed25519"):
        load_public_key(path)


def test_keygen_creates_missing_directories(cli, tmp_path):
    result = cli("keygen", "--out", tmp_path / "new" / "dir" / "release")
    assert result.code == EXIT_OK, result.stderr
    assert (tmp_path / "new/dir/release.key").exists()


def test_keygen_into_an_unwritable_place_is_a_clear_error(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = cli("keygen", "--out", blocker / "release")
    assert result.code == EXIT_USAGE and "cannot create key file" in result.error_line
    assert "Traceback" not in result.stderr
