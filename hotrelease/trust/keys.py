"""Ed25519 keys and detached signature envelopes.

An envelope (`*.sig`, JSON) holds k-of-n signatures over one payload. Each signature covers a
DSSE-style pre-authentication encoding of (payload type, payload bytes), so a signature made
for one role (release manifest, security label, stage approval) can never be replayed as
another. This module does no network or git I/O; the agent imports it unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hotrelease.errors import KeyFileError, ManifestFormatError, SignatureError, ThresholdError
from hotrelease.trust.canonical import JSONInputError, canonical_bytes, pretty_bytes, strict_loads

ENVELOPE_FORMAT = "hotrelease/envelope/v1"
# Payload types double as roles: the same key may hold several, but a signature made for one
# role does not verify for another.
MANIFEST_TYPE = "application/vnd.hotrelease.manifest+json"
SECURITY_LABEL_TYPE = "application/vnd.hotrelease.security-label+json"
APPROVAL_TYPE = "application/vnd.hotrelease.approval+json"


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


# --- keys ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    key: Ed25519PublicKey
    raw: bytes

    @property
    def keyid(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @classmethod
    def from_key(cls, key: Ed25519PublicKey) -> PublicKey:
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(key, raw)

    @classmethod
    def from_pem(cls, data: bytes, source: str = "public key") -> PublicKey:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            raise KeyFileError(f"{source}: not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{source}: not an Ed25519 public key")
        return cls.from_key(key)

    def to_pem(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.PEM,
                                     serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public: PublicKey) -> str:
    return public.keyid


def generate_keypair(prefix: Path, passphrase: bytes | None = None) -> PublicKey:
    """Write PREFIX.key (PEM PKCS#8, mode 0600) and PREFIX.pub; refuse to overwrite."""
    key_path, pub_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for path in (key_path, pub_path):
        if path.exists():
            raise KeyFileError(f"{path}: already exists; refusing to overwrite a key")
    private = Ed25519PrivateKey.generate()
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                encryption)
    try:
        key_path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL + 0600 at creation: the key is never readable by others, not even briefly.
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise KeyFileError(f"{key_path}: cannot create key file: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public = PublicKey.from_key(private.public_key())
    pub_path.write_bytes(public.to_pem())
    return public


def _decode_private(data: bytes, source: str, passphrase: bytes | None) -> Ed25519PrivateKey:
    text = data.strip()
    if not text.startswith(b"-----BEGIN"):
        # CI masked variables must be one line: accept the PEM base64-encoded as a whole.
        try:
            text = base64.b64decode(text, validate=True).strip()
        except (binascii.Error, ValueError):
            raise KeyFileError(f"{source}: neither a PEM private key nor base64 of one") from None
    try:
        key = serialization.load_pem_private_key(text, password=passphrase or None)
    except TypeError as exc:
        msg = "key is encrypted: give its passphrase" if "encrypted" in str(exc) and \
            not passphrase else "key is not encrypted but a passphrase was given"
        raise KeyFileError(f"{source}: {msg}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{source}: not a PEM private key, or wrong passphrase") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{source}: not an Ed25519 private key")
    return key


def load_private_key(path: Path | None = None, *, env: str | None = None,
                     passphrase: bytes | None = None) -> Ed25519PrivateKey:
    if path is not None:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read private key: {exc.strerror}") from None
        return _decode_private(data, str(path), passphrase)
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise KeyFileError(f"environment variable {env} is not set or empty")
        return _decode_private(value.encode(), f"${env}", passphrase)
    raise KeyFileError("no private key given")


def load_public_key(path: Path) -> PublicKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read public key: {exc.strerror}") from None
    return PublicKey.from_pem(data, str(path))


def load_trusted(paths: list[Path]) -> dict[str, PublicKey]:
    keys: dict[str, PublicKey] = {}
    for path in paths:
        pub = load_public_key(path)
        keys[pub.keyid] = pub
    return keys


# --- envelopes -----------------------------------------------------------------------------


@dataclass
class Signature:
    keyid: str
    sig: bytes


@dataclass
class Envelope:
    payload_type: str
    signatures: list[Signature] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": ENVELOPE_FORMAT,
            "payload_type": self.payload_type,
            "signatures": [{"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode()}
                           for s in self.signatures],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Envelope:
        if not isinstance(data, dict) or data.get("format") != ENVELOPE_FORMAT:
            raise SignatureError(f"signature envelope is not in {ENVELOPE_FORMAT} format")
        if set(data) != {"format", "payload_type", "signatures"}:
            raise SignatureError("signature envelope has missing or unknown fields")
        ptype, sigs = data["payload_type"], data["signatures"]
        if not isinstance(ptype, str) or not isinstance(sigs, list):
            raise SignatureError("signature envelope fields have the wrong types")
        out = []
        for i, item in enumerate(sigs):
            if (not isinstance(item, dict) or set(item) != {"keyid", "sig"}
                    or not isinstance(item["keyid"], str) or not isinstance(item["sig"], str)):
                raise SignatureError(f"signature #{i + 1} in the envelope is malformed")
            try:
                raw = base64.b64decode(item["sig"], validate=True)
            except (binascii.Error, ValueError):
                raise SignatureError(f"signature #{i + 1} is not valid base64") from None
            out.append(Signature(item["keyid"], raw))
        return cls(ptype, out)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "signature") -> Envelope:
        try:
            parsed = strict_loads(data)
        except JSONInputError as exc:
            raise SignatureError(f"{source}: not a JSON signature envelope ({exc}; "
                                 "truncated?)") from None
        return cls.from_dict(parsed)

    @classmethod
    def load(cls, path: Path) -> Envelope:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise SignatureError(f"{path}: signature file not found (unsigned?)") from None
        return cls.from_bytes(data, str(path))

    def save(self, path: Path) -> None:
        tmp = Path(f"{path}.tmp")
        tmp.write_bytes(pretty_bytes(self.to_dict()))
        os.replace(tmp, path)

    def add_signature(self, payload: bytes, private: Ed25519PrivateKey) -> str:
        """Sign and add (or replace) this key's signature; returns the key id."""
        keyid = PublicKey.from_key(private.public_key()).keyid
        sig = private.sign(pae(self.payload_type, payload))
        self.signatures = [s for s in self.signatures if s.keyid != keyid]
        self.signatures.append(Signature(keyid, sig))
        return keyid


def verify_envelope(envelope: Envelope, payload: bytes, *, payload_type: str,
                    trusted: dict[str, PublicKey], threshold: int) -> list[str]:
    """Raise unless `threshold` distinct trusted keys signed `payload` for this role.

    A bad signature from a trusted key is a hard failure even if enough others are good:
    it means the payload or envelope was changed after signing. Returns the signer key ids.
    """
    if threshold < 1:
        raise ThresholdError("threshold must be at least 1")
    if envelope.payload_type != payload_type:
        raise SignatureError(f"signature envelope is for {envelope.payload_type!r}, "
                             f"expected {payload_type!r}")
    message = pae(payload_type, payload)
    good: list[str] = []
    untrusted: list[str] = []
    for signature in envelope.signatures:
        public = trusted.get(signature.keyid)
        if public is None:
            untrusted.append(signature.keyid)
            continue
        try:
            public.key.verify(signature.sig, message)
        except InvalidSignature:
            raise SignatureError(
                f"signature by trusted key {signature.keyid[:12]} does not verify: the signed "
                "document or the signature was changed after signing") from None
        if signature.keyid not in good:
            good.append(signature.keyid)
    if len(good) < threshold:
        if not good and untrusted:
            ids = ", ".join(k[:12] for k in untrusted)
            raise SignatureError(f"signed only by untrusted key(s) {ids}")
        if not envelope.signatures:
            raise ThresholdError(f"no signatures; {threshold} trusted signature(s) required")
        raise ThresholdError(f"{len(good)} valid trusted signature(s), "
                             f"threshold is {threshold}")
    return good


def verify_signed_json(data: Any, envelope: Envelope, *, payload_type: str,
                       trusted: dict[str, PublicKey], threshold: int, what: str) -> list[str]:
    """`verify_envelope` over the canonical bytes of a parsed JSON document (labels,
    approvals); a document that has no canonical form (floats) is refused as malformed."""
    try:
        payload = canonical_bytes(data)
    except ValueError as exc:
        raise ManifestFormatError(f"{what}: {exc}") from None
    return verify_envelope(envelope, payload, payload_type=payload_type, trusted=trusted,
                           threshold=threshold)
