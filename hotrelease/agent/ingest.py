"""Ingest: a release arrives (PUT of the bundle, the signed manifest in two headers), is
verified against the keys this node trusts, extracted member by member and stored under
`releases/<name>/<version>`; nothing is stored that did not verify.

`begin` runs every check that needs no body; the HTTP layer (`agent.upload`) streams the body
to disk, hashing it on the way; `finish` verifies, extracts and renames it into place.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
from pathlib import Path
from typing import Any

from hotrelease.agent.core import AgentCore, ms_since, now
from hotrelease.agent.floor import SecurityFloor
from hotrelease.agent.store import crash_point
from hotrelease.agent.wire import MANIFEST_HEADER, SIGNATURE_HEADER, UploadResult
from hotrelease.errors import (
    Conflict,
    DigestMismatchError,
    HotreleaseError,
    ManifestFormatError,
    SignatureError,
    TooLarge,
    VerificationError,
)
from hotrelease.trust.archive import fsync_dir, safe_extract
from hotrelease.trust.canonical import pretty_bytes
from hotrelease.trust.keys import Envelope
from hotrelease.trust.manifest import ReleaseManifest
from hotrelease.trust.verify import (
    verify_bundle_digest,
    verify_bundle_files,
    verify_manifest_document,
)

MAX_MANIFEST_BYTES = 256 * 1024


class Ingest:
    def __init__(self, core: AgentCore, floor: SecurityFloor) -> None:
        self.core = core
        self.floor = floor
        self._lock = threading.Lock()

    def begin(self, name: str, version: str, who: str, headers: dict[str, str],
              content_length: int | None) -> tuple[ReleaseManifest, bytes, bytes, bool]:
        """Everything checked before the body is read. Returns the verified manifest, the
        bytes to store for it and for its envelope (the verified values, re-serialized: never
        the bytes as uploaded), and whether this exact release is already stored."""
        core = self.core
        core.plugin(name, who=who, action="upload")
        record: dict[str, Any] = {"action": "upload", "who": who, "version": version}
        core.check_version_param(name, version, record)
        cap = core.config.max_upload_bytes
        if content_length is not None and content_length > cap:
            raise core.refuse(name, record, TooLarge(
                f"declared body of {content_length} bytes is over the limit of {cap}"))
        try:
            manifest_bytes = _b64_header(headers, MANIFEST_HEADER, ManifestFormatError)
            envelope_bytes = _b64_header(headers, SIGNATURE_HEADER, SignatureError)
            envelope = Envelope.from_bytes(envelope_bytes, "signature header")
            manifest, document = verify_manifest_document(
                manifest_bytes, envelope, trusted=core.config.trusted,
                threshold=core.config.threshold, now=core.clock(), source="manifest header",
                expected_name=name, expected_version=version)
        except VerificationError as exc:
            raise core.refuse(name, record, exc) from None
        # What lands in the release dir is the document whose canonical form was verified
        # (duplicate keys were refused while parsing), in the form `hotrelease build` writes.
        manifest_bytes = pretty_bytes(document)
        envelope_bytes = pretty_bytes(envelope.to_dict())
        record["release_id"] = manifest.release_id
        record["bundle_sha256"] = manifest.bundle.sha256
        # Stored below the floor it could never be activated: refuse it now, not later.
        self.floor.check(name, version, record)
        if manifest.bundle.size > cap:
            raise core.refuse(name, record, TooLarge(
                f"manifest declares a bundle of {manifest.bundle.size} bytes, over the limit "
                f"of {cap}"))
        existing = core.release_info(name, version)
        if existing is not None and existing.bundle_sha256 != manifest.bundle.sha256:
            raise core.refuse(name, record, Conflict(
                f"{manifest.release_id} is already stored with another bundle digest "
                f"({existing.bundle_sha256[:12]}); versions are immutable",
                code="version_conflict"))
        return manifest, manifest_bytes, envelope_bytes, existing is not None

    def finish(self, name: str, who: str, manifest: ReleaseManifest, manifest_bytes: bytes,
               envelope_bytes: bytes, workdir: Path, bundle: Path, digest: str, *,
               received_ms: float | None = None) -> UploadResult:
        """Body received and fsynced into `workdir/bundle`: verify, extract, rename.
        `received_ms` (how long the body took to arrive) joins the timings."""
        core = self.core
        record: dict[str, Any] = {"action": "upload", "who": who, "version": manifest.version,
                                  "release_id": manifest.release_id,
                                  "bundle_sha256": manifest.bundle.sha256}
        timings: dict[str, float] = {}
        t0 = now()
        try:
            # The digest was computed while the body streamed to disk: no second read.
            verify_bundle_digest(manifest, digest, bundle.stat().st_size, "uploaded bundle")
            timings["verify_ms"] = ms_since(t0)
            crash_point("upload.verified")
            staged = workdir / "release"
            files_dir = staged / "files"
            files_dir.mkdir(parents=True)
            total = sum(f.size for f in manifest.files)
            entries = safe_extract(bundle, files_dir, limits=core.config.extract_limits,
                                   max_total_bytes=total,
                                   on_file=lambda _: crash_point("upload.extracting"))
            # What landed on disk is exactly what was signed, member by member (the same
            # check `hotrelease verify` runs on the archive's listing).
            verify_bundle_files(manifest, entries, "extracted release")
            timings["extract_ms"] = ms_since(t0) - timings["verify_ms"]
        except VerificationError as exc:
            raise core.refuse(name, record, exc) from None
        (staged / "manifest.json").write_bytes(manifest_bytes)
        (staged / "manifest.json.sig").write_bytes(envelope_bytes)
        for path in (staged / "manifest.json", staged / "manifest.json.sig"):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fchmod(fd, 0o444)
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(staged)
        crash_point("upload.extracted")
        parent = core.store.releases / name
        if not parent.is_dir():
            parent.mkdir()
            fsync_dir(core.store.releases)
        target = parent / manifest.version
        with self._lock:
            existing = core.release_info(name, manifest.version)
            if existing is not None:  # a concurrent upload of the same version won
                if existing.bundle_sha256 != manifest.bundle.sha256:
                    raise core.refuse(name, record, Conflict(
                        f"{manifest.release_id} is already stored with another digest",
                        code="version_conflict"))
                core.store.append_history(name, {**record, "result": "unchanged"})
                return UploadResult.of("unchanged", existing)
            os.rename(staged, target)
            fsync_dir(parent)
            crash_point("upload.stored")
        core.store.append_history(name, {**record, "result": "stored",
                                         "bundle_size": manifest.bundle.size})
        info = core.release_info(name, manifest.version)
        assert info is not None
        timings["store_ms"] = ms_since(t0)
        if received_ms is not None:
            timings["receive_ms"] = received_ms
        return UploadResult.of("stored", info, timings)

    def unchanged(self, name: str, who: str, manifest: ReleaseManifest, digest: str,
                  size: int) -> UploadResult:
        """This exact release is already stored: the body only has to match it."""
        core = self.core
        record = {"action": "upload", "who": who, "version": manifest.version,
                  "release_id": manifest.release_id, "bundle_sha256": manifest.bundle.sha256}
        if size != manifest.bundle.size or digest != manifest.bundle.sha256:
            raise core.refuse(name, record, DigestMismatchError(
                "uploaded body does not match the manifest's bundle digest"))
        core.store.append_history(name, {**record, "result": "unchanged"})
        info = core.release_info(name, manifest.version)
        assert info is not None
        return UploadResult.of("unchanged", info)

    def refuse(self, name: str, who: str, version: str, exc: HotreleaseError) -> \
            HotreleaseError:
        """A refusal while the body streams in (too large, cut short, wrong size)."""
        return self.core.refuse(name, {"action": "upload", "who": who, "version": version}, exc)


def _b64_header(headers: dict[str, str], key: str, error: type[HotreleaseError]) -> bytes:
    value = headers.get(key)
    if not value:
        raise error(f"missing {key} header (base64 of the "
                    f"{'manifest' if 'manifest' in key else 'signature envelope'})")
    if len(value) > MAX_MANIFEST_BYTES * 4 // 3 + 4:
        raise error(f"{key} header is too large")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{key} header is not valid base64") from None
