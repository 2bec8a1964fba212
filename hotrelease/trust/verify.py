"""Verify a signed release: signatures first, then identity, expiry, bundle bytes.

Every function here returns normally or raises one precise `VerificationError` subclass; none
returns a bool. No network or git I/O: the agent imports this module unchanged.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from hotrelease.errors import (
    DigestMismatchError,
    IdentityMismatchError,
    ManifestFormatError,
    SizeMismatchError,
)
from hotrelease.trust.archive import scan_bundle
from hotrelease.trust.digest import sha256_file
from hotrelease.trust.keys import MANIFEST_TYPE, Envelope, PublicKey, verify_envelope
from hotrelease.trust.manifest import (
    FileEntry,
    ReleaseManifest,
    parse_manifest_bytes,
    signature_path_for,
)


def verify_manifest_bytes(data: bytes, envelope: Envelope, *, trusted: dict[str, PublicKey],
                          threshold: int, now: datetime, source: str = "manifest",
                          expected_name: str | None = None,
                          expected_version: str | None = None) -> ReleaseManifest:
    """Check signatures over the manifest, then parse it strictly and check identity and
    expiry. Returns the (now trusted) manifest."""
    return verify_manifest_document(
        data, envelope, trusted=trusted, threshold=threshold, now=now, source=source,
        expected_name=expected_name, expected_version=expected_version)[0]


def verify_manifest_document(data: bytes, envelope: Envelope, *,
                             trusted: dict[str, PublicKey], threshold: int, now: datetime,
                             source: str = "manifest", expected_name: str | None = None,
                             expected_version: str | None = None, check_expiry: bool = True
                             ) -> tuple[ReleaseManifest, dict[str, Any]]:
    """`verify_manifest_bytes`, also returning the verified document: the JSON value whose
    canonical form the signatures cover. Whoever keeps a copy (the agent) writes that value,
    never `data`: other spellings of the same document (white space, key order, escapes)
    verify too, and only the value is vouched for. `check_expiry=False` is for the agent's
    recorded override (rolling back to an expired release it ran before)."""
    raw, canonical = parse_manifest_bytes(data, source)
    verify_envelope(envelope, canonical, payload_type=MANIFEST_TYPE, trusted=trusted,
                    threshold=threshold)
    manifest = ReleaseManifest.from_dict(raw)
    if expected_name is not None and manifest.name != expected_name:
        raise IdentityMismatchError(
            f"manifest is for plugin {manifest.name!r}, expected {expected_name!r}")
    if expected_version is not None and manifest.version != expected_version:
        raise IdentityMismatchError(
            f"manifest is for version {manifest.version}, expected {expected_version}")
    if check_expiry:
        manifest.check_not_expired(now)
    return manifest, raw


def verify_bundle(manifest: ReleaseManifest, bundle_path: Path) -> None:
    """The bundle's size and digest match the manifest, and so does every file inside."""
    if not bundle_path.is_file():
        raise DigestMismatchError(f"{bundle_path}: bundle not found")
    actual_size = bundle_path.stat().st_size
    if actual_size != manifest.bundle.size:  # cheap, before reading a byte
        verify_bundle_digest(manifest, "", actual_size, bundle_path.name)
    digest, size = sha256_file(bundle_path)
    verify_bundle_digest(manifest, digest, size, bundle_path.name)
    verify_bundle_files(manifest, scan_bundle(bundle_path), bundle_path.name)


def verify_bundle_digest(manifest: ReleaseManifest, digest: str, size: int,
                         source: str) -> None:
    """Size and sha256 of the bundle bytes against the manifest. The agent passes what it
    computed while the body streamed in, instead of reading the file again."""
    if size != manifest.bundle.size:
        raise SizeMismatchError(f"{source}: size is {size} bytes, manifest says "
                                f"{manifest.bundle.size}")
    if digest != manifest.bundle.sha256:
        raise DigestMismatchError(f"{source}: sha256 is {digest}, manifest says "
                                  f"{manifest.bundle.sha256}")


def verify_bundle_files(manifest: ReleaseManifest, files: list[FileEntry], source: str) -> None:
    expected = {f.path: f for f in manifest.files}
    seen = set()
    for entry in files:
        want = expected.get(entry.path)
        if want is None:
            raise DigestMismatchError(f"{source}: {entry.path} is not listed in the manifest")
        if entry.size != want.size:
            raise SizeMismatchError(f"{source}: {entry.path} is {entry.size} bytes, manifest "
                                    f"says {want.size}")
        if entry.sha256 != want.sha256:
            raise DigestMismatchError(f"{source}: {entry.path} sha256 does not match the "
                                      "manifest")
        seen.add(entry.path)
    missing = sorted(set(expected) - seen)
    if missing:
        raise DigestMismatchError(f"{source}: {missing[0]} is listed in the manifest but "
                                  "missing from the bundle")


def verify_release(manifest_path: Path, *, trusted: dict[str, PublicKey], threshold: int,
                   now: datetime, bundle_path: Path | None = None,
                   signature_path: Path | None = None) -> ReleaseManifest:
    """`hotrelease verify`: manifest + detached signature + bundle next to the manifest."""
    try:
        data = manifest_path.read_bytes()
    except FileNotFoundError:
        raise ManifestFormatError(f"{manifest_path}: manifest not found") from None
    envelope = Envelope.load(signature_path or signature_path_for(manifest_path))
    manifest = verify_manifest_bytes(data, envelope, trusted=trusted, threshold=threshold,
                                     now=now, source=str(manifest_path))
    verify_bundle(manifest, bundle_path or manifest_path.parent / manifest.bundle.filename)
    return manifest
