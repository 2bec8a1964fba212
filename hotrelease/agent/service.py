"""The agent's operations: ingest a release, activate, roll back, accept advisories, recover.

The HTTP layer (`app.py`) only parses requests and maps errors; every decision is here.
Each refusal raises one `HotreleaseError` with a stable code *after* recording it in history,
and nothing on disk changes before all checks passed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hotrelease.agent.config import AgentConfig, PluginConfig
from hotrelease.agent.hooks import (
    run_health,
    run_precheck,
    run_reload,
    terminate_running_hooks,
)
from hotrelease.agent.store import Store, crash_point, fsync_dir, utcnow, write_json
from hotrelease.errors import (
    DigestMismatchError,
    ExpiredError,
    HotreleaseError,
    IdentityMismatchError,
    ManifestFormatError,
    PolicyError,
    SignatureError,
    ThresholdError,
    UsageError,
    VerificationError,
)
from hotrelease.trust.archive import safe_extract
from hotrelease.trust.canonical import clip, pretty_bytes
from hotrelease.trust.digest import sha256_file
from hotrelease.trust.keys import APPROVAL_TYPE, Envelope, verify_signed_json
from hotrelease.trust.labels import verify_label
from hotrelease.trust.manifest import (
    MAX_NAME_LENGTH,
    FileEntry,
    ReleaseManifest,
    check_name,
    check_version,
    format_time,
    parse_manifest_bytes,
)
from hotrelease.trust.verify import (
    verify_bundle_digest,
    verify_bundle_files,
    verify_manifest_document,
)
from hotrelease.trust.versions import MAX_VERSION_LENGTH, parse_version

MANIFEST_HEADER = "x-hotrelease-manifest"
SIGNATURE_HEADER = "x-hotrelease-signature"
MAX_MANIFEST_BYTES = 256 * 1024


# --- agent-specific errors (HTTP status chosen in app.py by class) ---------------------------


class BadRequest(UsageError):
    code = "bad_request"


class NotFound(HotreleaseError):
    code = "not_found"


class Conflict(HotreleaseError):
    code = "conflict"


class TooLarge(VerificationError):
    code = "too_large"


class AdvisoryUnreadable(PolicyError):
    """A stored advisory cannot be read: the security floor is unknown, so nothing that the
    floor guards (activation, rollback, upload) goes ahead until an operator repairs it."""

    code = "advisory_unreadable"


class AgentFailure(HotreleaseError):
    """The agent itself could not complete an operation (disk full, I/O error)."""

    code = "internal"


def _version_key(version: str) -> Any:
    return parse_version(version)


def _below(a: str, b: str) -> bool:
    return bool(_version_key(a) < _version_key(b))


def _ran_versions(state: dict[str, Any]) -> set[str]:
    """Versions that were live on this node after passing their health check. States written
    before `ran` was kept know at least current, previous and the highest activated."""
    ran = set(state.get("ran") or ())
    ran.update(v for v in (state.get("current"), state.get("previous"),
                           state.get("highest_activated")) if isinstance(v, str))
    if state.get("state") == "unhealthy":  # kept live only because going back was refused
        ran.discard(state.get("current"))
    return ran


@dataclass
class Meta:
    """Caller-supplied context recorded in history. `approval` ({"approval", "envelope"}) is
    enforced when the agent has approver keys (see `Agent.check_approval`)."""

    stage: str | None = None
    release_id: str | None = None
    pipeline_url: str | None = None
    approval: dict[str, Any] | None = None
    reason: str | None = None
    # Rollback only: the target's manifest may have expired (a known-good release this node
    # ran before). Recorded in history with the expiry that was overridden.
    allow_expired: bool = False

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None and v is not False}


class Agent:
    def __init__(self, config: AgentConfig, *, clock: Callable[[], datetime] | None = None):
        self.config = config
        self.store = Store(config.data_dir)
        self.clock = clock or (lambda: datetime.now(UTC))
        self._switch_locks = {name: threading.Lock() for name in config.plugins}
        # What an activation or rollback under way is doing, for the plugin state: a caller
        # that finds the slot busy waits for it and judges its outcome instead of failing.
        self._in_progress: dict[str, dict[str, Any]] = {}
        self._ingest_lock = threading.Lock()

    # --- helpers ----------------------------------------------------------------------------
    def plugin(self, name: str, *, who: str | None = None, action: str = "request") -> \
            PluginConfig:
        try:
            check_name(name)
        except ManifestFormatError as exc:
            self.store.append_history(None, {"action": action, "who": who,
                                             "plugin": clip(name, MAX_NAME_LENGTH),
                                             "result": "refused", "code": "bad_name",
                                             "reason": str(exc)})
            raise BadRequest(str(exc), code="bad_name") from None
        pcfg = self.config.plugins.get(name)
        if pcfg is None:
            self.store.append_history(None, {"action": action, "who": who, "plugin": name,
                                             "result": "refused", "code": "unknown_plugin",
                                             "reason": "no such plugin slot on this node"})
            raise NotFound(f"plugin {name!r} is not configured on this agent",
                           code="unknown_plugin")
        return pcfg

    def refuse(self, name: str, record: dict[str, Any], exc: HotreleaseError) -> \
            HotreleaseError:
        self.store.append_history(name, {**record, "result": "refused", "code": exc.code,
                                         "reason": str(exc)})
        return exc

    def check_version_param(self, name: str, version: str, record: dict[str, Any]) -> str:
        try:
            return check_version(version)
        except ManifestFormatError as exc:
            record["version"] = clip(version, MAX_VERSION_LENGTH)  # not a megabyte of it
            raise self.refuse(name, record, BadRequest(str(exc), code="bad_version")) from None

    def security_floor(self, name: str) -> tuple[str | None, str | None]:
        """(floor version, advisory id): the highest fixing version among the labels seen.
        Fails closed: an advisory record that cannot be read raises `AdvisoryUnreadable`
        (the floor it holds is unknown, so no version can be shown to be above it)."""
        floor: str | None = None
        advisory: str | None = None
        directory = self.store.plugins / name / "advisories"
        if not directory.is_dir():
            return None, None
        for path in sorted(directory.iterdir()):
            if path.name.startswith("."):  # a temp file of an interrupted atomic write
                continue
            try:
                doc = json.loads(path.read_bytes())
                version = check_version(doc["label"]["version"])
                found = doc["label"].get("advisory")
            except OSError as exc:
                raise AdvisoryUnreadable(f"the security floor is unknown: {path}: "
                                         f"{exc.strerror}") from None
            except (ValueError, KeyError, TypeError, AttributeError, HotreleaseError) as exc:
                raise AdvisoryUnreadable(f"the security floor is unknown: {path}: not an "
                                         f"advisory record ({exc})") from None
            if floor is None or _below(floor, version):
                floor, advisory = version, found
        return floor, advisory

    def floor_refusal(self, name: str, version: str) -> PolicyError | None:
        """Why the security floor forbids running `version` (None: it does not): below the
        floor, or the floor is unknown (an unreadable advisory)."""
        try:
            floor, advisory = self.security_floor(name)
        except AdvisoryUnreadable as exc:
            return exc
        if floor is not None and _below(version, floor):
            return PolicyError(f"{name}@{version} is below the security floor {floor} "
                               f"({advisory})", code="below_security_floor")
        return None

    def check_floor(self, name: str, version: str, record: dict[str, Any]) -> None:
        refusal = self.floor_refusal(name, version)
        if refusal is not None:
            raise self.refuse(name, record, refusal)

    def release_info(self, name: str, version: str) -> dict[str, Any] | None:
        rdir = self.store.release_dir(name, version)
        try:
            data = (rdir / "manifest.json").read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        raw, _ = parse_manifest_bytes(data)
        manifest = ReleaseManifest.from_dict(raw)
        return {"name": name, "version": version, "release_id": manifest.release_id,
                "bundle_sha256": manifest.bundle.sha256, "bundle_size": manifest.bundle.size,
                "kind": manifest.kind, "expires": raw.get("expires"),
                "path": str(rdir)}

    # --- ingest -------------------------------------------------------------------------------
    def begin_upload(self, name: str, version: str, who: str, headers: dict[str, str],
                     content_length: int | None) -> tuple[ReleaseManifest, bytes, bytes, bool]:
        """Everything checked before the body is read. Returns the verified manifest, the
        bytes to store for it and for its envelope (the verified values, re-serialized: never
        the bytes as uploaded), and whether this exact release is already stored."""
        self.plugin(name, who=who, action="upload")
        record: dict[str, Any] = {"action": "upload", "who": who, "version": version}
        self.check_version_param(name, version, record)
        cap = self.config.max_upload_bytes
        if content_length is not None and content_length > cap:
            raise self.refuse(name, record, TooLarge(
                f"declared body of {content_length} bytes is over the limit of {cap}"))
        try:
            manifest_bytes = _b64_header(headers, MANIFEST_HEADER, ManifestFormatError)
            envelope_bytes = _b64_header(headers, SIGNATURE_HEADER, SignatureError)
            envelope = Envelope.from_bytes(envelope_bytes, "signature header")
            manifest, document = verify_manifest_document(
                manifest_bytes, envelope, trusted=self.config.trusted,
                threshold=self.config.threshold, now=self.clock(), source="manifest header",
                expected_name=name, expected_version=version)
        except VerificationError as exc:
            raise self.refuse(name, record, exc) from None
        # What lands in the release dir is the document whose canonical form was verified
        # (duplicate keys were refused while parsing), in the form `hotrelease build` writes.
        manifest_bytes = pretty_bytes(document)
        envelope_bytes = pretty_bytes(envelope.to_dict())
        record["release_id"] = manifest.release_id
        record["bundle_sha256"] = manifest.bundle.sha256
        # Stored below the floor it could never be activated: refuse it now, not later.
        self.check_floor(name, version, record)
        if manifest.bundle.size > cap:
            raise self.refuse(name, record, TooLarge(
                f"manifest declares a bundle of {manifest.bundle.size} bytes, over the limit "
                f"of {cap}"))
        existing = self.release_info(name, version)
        if existing is not None and existing["bundle_sha256"] != manifest.bundle.sha256:
            raise self.refuse(name, record, Conflict(
                f"{manifest.release_id} is already stored with another bundle digest "
                f"({existing['bundle_sha256'][:12]}); versions are immutable",
                code="version_conflict"))
        return manifest, manifest_bytes, envelope_bytes, existing is not None

    def finish_upload(self, name: str, who: str, manifest: ReleaseManifest,
                      manifest_bytes: bytes, envelope_bytes: bytes, workdir: Path,
                      bundle: Path, digest: str) -> dict[str, Any]:
        """Body received and fsynced into `workdir/bundle`: verify, extract, rename."""
        record: dict[str, Any] = {"action": "upload", "who": who, "version": manifest.version,
                                  "release_id": manifest.release_id,
                                  "bundle_sha256": manifest.bundle.sha256}
        timings: dict[str, float] = {}
        t0 = _now()
        try:
            # The digest was computed while the body streamed to disk: no second read.
            verify_bundle_digest(manifest, digest, bundle.stat().st_size, "uploaded bundle")
            timings["verify_ms"] = _ms(t0)
            crash_point("upload.verified")
            staged = workdir / "release"
            files_dir = staged / "files"
            files_dir.mkdir(parents=True)
            total = sum(f.size for f in manifest.files)
            entries = safe_extract(bundle, files_dir, limits=self.config.extract_limits,
                                   max_total_bytes=total,
                                   on_file=lambda _: crash_point("upload.extracting"))
            # What landed on disk is exactly what was signed, member by member (the same
            # check `hotrelease verify` runs on the archive's listing).
            verify_bundle_files(manifest, entries, "extracted release")
            timings["extract_ms"] = _ms(t0) - timings["verify_ms"]
        except VerificationError as exc:
            raise self.refuse(name, record, exc) from None
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
        parent = self.store.releases / name
        if not parent.is_dir():
            parent.mkdir()
            fsync_dir(self.store.releases)
        target = parent / manifest.version
        with self._ingest_lock:
            existing = self.release_info(name, manifest.version)
            if existing is not None:  # a concurrent upload of the same version won
                if existing["bundle_sha256"] != manifest.bundle.sha256:
                    raise self.refuse(name, record, Conflict(
                        f"{manifest.release_id} is already stored with another digest",
                        code="version_conflict"))
                self.store.append_history(name, {**record, "result": "unchanged"})
                return {"status": "unchanged", **existing}
            os.rename(staged, target)
            fsync_dir(parent)
            crash_point("upload.stored")
        self.store.append_history(name, {**record, "result": "stored",
                                         "bundle_size": manifest.bundle.size})
        info = self.release_info(name, manifest.version)
        assert info is not None
        timings["store_ms"] = _ms(t0)
        return {"status": "stored", **info, "timings": timings}

    def upload_unchanged(self, name: str, who: str, manifest: ReleaseManifest,
                         digest: str, size: int) -> dict[str, Any]:
        record = {"action": "upload", "who": who, "version": manifest.version,
                  "release_id": manifest.release_id, "bundle_sha256": manifest.bundle.sha256}
        if size != manifest.bundle.size or digest != manifest.bundle.sha256:
            raise self.refuse(name, record, DigestMismatchError(
                "uploaded body does not match the manifest's bundle digest"))
        self.store.append_history(name, {**record, "result": "unchanged"})
        info = self.release_info(name, manifest.version)
        assert info is not None
        return {"status": "unchanged", **info}

    def refuse_upload(self, name: str, who: str, version: str, exc: HotreleaseError) -> \
            HotreleaseError:
        return self.refuse(name, {"action": "upload", "who": who, "version": version}, exc)

    # --- activation -----------------------------------------------------------------------------
    def activate(self, name: str, version: str, who: str, meta: Meta, *,
                 rollback: bool = False) -> dict[str, Any]:
        action = "rollback" if rollback else "activate"
        pcfg = self.plugin(name, who=who, action=action)
        record: dict[str, Any] = {"action": action, "who": who, **meta.record()}
        lock = self._switch_locks[name]
        if not lock.acquire(blocking=False):
            record["version"] = version
            raise self.refuse(name, record, Conflict(
                f"another activation of {name} is in progress", code="activation_in_progress"))
        try:
            self._in_progress[name] = {"action": action, "version": version,
                                       "since": utcnow(), "release_id": meta.release_id}
            return self._activate_locked(pcfg, version, record, rollback=rollback)
        finally:
            self._in_progress.pop(name, None)
            lock.release()

    def in_progress(self, name: str) -> dict[str, Any] | None:
        """The activation or rollback of `name` under way (target version, since), if any."""
        busy = self._in_progress.get(name)
        return dict(busy) if busy is not None else None

    def _activate_locked(self, pcfg: PluginConfig, version: str | None,
                         record: dict[str, Any], *, rollback: bool) -> dict[str, Any]:
        name = pcfg.name
        state = self.store.load_state(name)
        old = state.get("current")
        if version is None:  # rollback to the previous version
            version = state.get("previous")
            if version is None:
                raise self.refuse(name, record, Conflict(
                    f"{name} has no previous version to roll back to",
                    code="nothing_to_roll_back"))
        record.update({"version": version, "from": old})
        self.check_version_param(name, version, record)
        info = self.release_info(name, version)
        if info is None:
            raise self.refuse(name, record, NotFound(
                f"{name}@{version} is not stored on this node (upload it first)",
                code="not_stored"))
        record["release_id"] = info["release_id"]
        self.check_floor(name, version, record)
        if version == old:
            self.store.append_history(name, {**record, "result": "unchanged",
                                             "reason": "already the current version"})
            return {"result": "unchanged", "name": name, "version": version,
                    "current": version, "state": state}
        highest = state.get("highest_activated")
        if not rollback and highest is not None and _below(version, highest):
            raise self.refuse(name, record, PolicyError(
                f"{name}@{version} is lower than {highest}, already activated on this node; "
                "use the rollback endpoint to go back to a stored version",
                code="downgrade"))
        # A rollback skips the approval only to go back to a version this node ran; anything
        # else is an activation under another name and needs what an activation needs.
        known_good = rollback and version in _ran_versions(state)
        allow_expired = bool(record.pop("allow_expired", False))
        if allow_expired:
            if not known_good:
                raise self.refuse(name, record, UsageError(
                    f"allow_expired applies only to a rollback to a version this node ran "
                    f"before; {name}@{version} never ran here", code="bad_request"))
            record["override"] = "allow_expired"
        try:
            manifest = self.check_release(name, version, allow_expired=allow_expired)
            if not known_good:
                self.check_approval(name, version, info["bundle_sha256"], record)
        except ExpiredError as exc:
            hint = ("; a rollback to a version this node ran before may override that with "
                    "allow_expired" if known_good else "")
            raise self.refuse(name, record, ExpiredError(f"{exc}{hint}")) from None
        except (VerificationError, PolicyError) as exc:
            raise self.refuse(name, record, exc) from None
        if allow_expired and self.clock() >= manifest.expires:
            record["expired"] = format_time(manifest.expires)
        ok, detail = run_precheck(pcfg.precheck, name=name, version=version,
                                  release_dir=str(self.store.release_dir(name, version)))
        if not ok:
            raise self.refuse(name, record, PolicyError(
                f"precheck refused {name}@{version} before the switch: {detail}",
                code="precheck_failed"))
        return self._switch(pcfg, state, old, version, record)

    def check_approval(self, name: str, version: str, bundle_sha256: str,
                       record: dict[str, Any]) -> None:
        """With approver keys configured, this node activates nothing (except a rollback)
        without a stage approval signed by them for this exact build and naming this node:
        a CI token alone cannot push past the nodes ops left ungated."""
        if not self.config.approval_keys:
            return
        from hotrelease.trust.approvals import verify_signed_approval

        given = record.get("approval")
        if not isinstance(given, dict) or not isinstance(given.get("approval"), dict) \
                or not isinstance(given.get("envelope"), dict):
            raise PolicyError(f"this node requires a signed stage approval to activate "
                              f"{name}@{version}", code="approval_required")
        verify_signed_approval(given["approval"], Envelope.from_dict(given["envelope"]),
                               trusted=self.config.approval_keys,
                               threshold=self.config.approval_threshold, name=name,
                               version=version, bundle_sha256=bundle_sha256, stage=None,
                               now=self.clock(), node=self.config.node_name)

    def check_release(self, name: str, version: str, *, allow_expired: bool = False) -> \
            ReleaseManifest:
        """Before every switch to a stored release: its manifest is still signed by enough
        of the keys trusted *now* (a key removed since it was stored no longer counts), not
        expired (unless `allow_expired`), and the stored files still match it (disk rot,
        tampering)."""
        rdir = self.store.release_dir(name, version)
        try:
            data = (rdir / "manifest.json").read_bytes()
            envelope = Envelope.from_bytes((rdir / "manifest.json.sig").read_bytes(),
                                           f"stored release {name}@{version} signature")
        except OSError as exc:
            raise DigestMismatchError(f"stored release {name}@{version}: cannot read its "
                                      f"signed manifest ({exc.strerror})") from None
        try:
            manifest, _ = verify_manifest_document(
                data, envelope, trusted=self.config.trusted, threshold=self.config.threshold,
                now=self.clock(), source=f"stored release {name}@{version}",
                expected_name=name, expected_version=version, check_expiry=not allow_expired)
        except (SignatureError, ThresholdError) as exc:  # keys rotated since it was stored
            raise type(exc)(f"stored release {name}@{version}: {exc} (under the keys this "
                            "node trusts now)", code=exc.code) from None
        entries = []
        for entry in manifest.files:
            path = rdir / "files" / entry.path
            if path.is_symlink() or not path.is_file():
                raise DigestMismatchError(f"stored release {name}@{version}: {entry.path} is "
                                          "missing or not a regular file")
            digest, size = sha256_file(path)
            entries.append(FileEntry(entry.path, digest, size))
        verify_bundle_files(manifest, entries, f"stored release {name}@{version}")
        return manifest

    def _switch(self, pcfg: PluginConfig, state: dict[str, Any], old: str | None, new: str,
                record: dict[str, Any]) -> dict[str, Any]:
        name = pcfg.name
        timings: dict[str, float] = {}
        t0 = _now()
        self.store.write_journal(name, {"op": record["action"], "from": old, "to": new,
                                        "who": record.get("who"), "started_at": utcnow()})
        crash_point("switch.journal")
        self.store.switch_current(name, new)
        crash_point("switch.swapped")
        timings["switch_ms"] = _ms(t0)
        current_path = str(self.store.current_link(name))
        t1 = _now()
        ok, reload_detail = run_reload(pcfg.reload, name=name, version=new,
                                       current_path=current_path)
        timings["reload_ms"] = _ms(t1)
        health_ok, health_detail, probes = False, "not run: reload failed", 0
        if ok:
            t2 = _now()
            health_ok, health_detail, probes = run_health(
                pcfg.health, name=name, version=new, current_path=current_path,
                on_probe=lambda n: crash_point("activate.health"))
            timings["health_ms"] = _ms(t2)
        health = {"ok": health_ok, "status": "pass" if health_ok else "fail",
                  "detail": health_detail, "probes": probes,
                  "version": new, "checked_at": utcnow()}
        if ok and health_ok:
            highest = state.get("highest_activated")
            state.update({
                "current": new, "previous": old, "state": "active", "activated_at": utcnow(),
                "highest_activated": new if highest is None or _below(highest, new)
                else highest,
                "ran": sorted(_ran_versions(state) | {new}, key=_version_key),
                "health": health, "last_result": "activated",
                "release_id": record.get("release_id")})
            self.store.save_state(name, state)
            crash_point("activate.committed")
            self.store.append_history(name, {**record, "result": "activated",
                                             "reason": health_detail, "timings": timings})
            self.store.clear_journal(name)
            return {"result": "activated", "name": name, "version": new, "from": old,
                    "current": new,
                    "health": health, "timings": timings, "state": state}
        reason = (f"reload failed: {reload_detail}" if not ok
                  else f"health check failed: {health_detail}")
        return self._auto_rollback(pcfg, state, old, new, record, reason, health, timings)

    def _auto_rollback(self, pcfg: PluginConfig, state: dict[str, Any], old: str | None,
                       new: str, record: dict[str, Any], reason: str,
                       failed_health: dict[str, Any], timings: dict[str, float]) -> \
            dict[str, Any]:
        name = pcfg.name
        self.store.write_journal(name, {"op": record["action"], "from": old, "to": new,
                                        "phase": "rolling_back", "reason": reason,
                                        "started_at": utcnow()})
        refused = self._cannot_go_back(name, old, record) if old is not None else None
        if refused is not None:
            # Going back would run a version with a known vulnerability, or one no longer
            # trusted (or the floor is unknown): stay, flag it.
            code, why = refused
            state.update({"current": new, "previous": old, "state": "unhealthy",
                          "activated_at": utcnow(), "health": failed_health,
                          "last_result": "failed"})
            self.store.save_state(name, state)
            detail = f"{reason}; automatic rollback to {old} refused: {why}"
            self.store.append_history(name, {**record, "result": "failed", "code": code,
                                             "reason": detail})
            self.store.clear_journal(name)
            return {"result": "failed", "name": name, "version": new, "from": old,
                    "current": new,
                    "reason": detail, "health": failed_health, "timings": timings,
                    "state": state}
        self.store.switch_current(name, old)
        crash_point("activate.rolling_back")
        back_health: dict[str, Any] | None = None
        if old is not None:
            current_path = str(self.store.current_link(name))
            ok, detail = run_reload(pcfg.reload, name=name, version=old,
                                    current_path=current_path)
            if ok:
                h_ok, h_detail, probes = run_health(pcfg.health, name=name, version=old,
                                                    current_path=current_path)
            else:
                h_ok, h_detail, probes = False, f"reload failed: {detail}", 0
            back_health = {"ok": h_ok, "status": "pass" if h_ok else "fail",
                           "detail": h_detail, "probes": probes, "version": old,
                           "checked_at": utcnow()}
        state.update({"current": old, "state": "rolled_back" if old is not None else "empty",
                      "health": back_health or failed_health, "last_result": "rolled_back",
                      "last_failure": {"version": new, "reason": reason, "at": utcnow()}})
        self.store.save_state(name, state)
        self.store.append_history(name, {**record, "result": "rolled_back", "reason": reason,
                                         "rolled_back_to": old,
                                         "rollback_health": back_health})
        self.store.clear_journal(name)
        return {"result": "rolled_back", "name": name, "version": new, "from": old,
                "current": old, "reason": reason, "health": failed_health,
                "rollback_health": back_health, "timings": timings, "state": state}

    def _cannot_go_back(self, name: str, old: str, record: dict[str, Any]) -> \
            tuple[str, str] | None:
        """Why the automatic rollback may not return to `old`, as (code, reason); None when
        it may. `old` ran a moment ago, so an expired manifest does not stop it (the expiry
        is noted in `record`); a key removed since, the security floor and the files do."""
        refusal = self.floor_refusal(name, old)
        if refusal is not None:
            return refusal.code, str(refusal)
        try:
            manifest = self.check_release(name, old, allow_expired=True)
        except VerificationError as exc:
            return exc.code, f"{name}@{old} no longer verifies ({exc})"
        if self.clock() >= manifest.expires:
            record["rollback_target_expired"] = format_time(manifest.expires)
        return None

    # --- advisories -----------------------------------------------------------------------------
    def add_advisory(self, name: str, who: str, label: Any, envelope: Any) -> dict[str, Any]:
        self.plugin(name, who=who, action="advisory")
        record: dict[str, Any] = {"action": "advisory", "who": who}
        if not self.config.security_keys:
            raise self.refuse(name, record, SignatureError(
                "this agent has no security keys configured; it cannot accept labels"))
        try:
            env = Envelope.from_dict(envelope)
            checked = verify_label(label, env, trusted=self.config.security_keys,
                                   threshold=self.config.security_threshold, now=self.clock(),
                                   name=name)
        except VerificationError as exc:
            raise self.refuse(name, record, exc) from None
        record.update({"version": checked.version, "advisory": checked.advisory,
                       "severity": checked.severity})
        info = self.release_info(name, checked.version)
        if info is not None and info["bundle_sha256"] != checked.bundle_sha256:
            raise self.refuse(name, record, IdentityMismatchError(
                f"label is for a different bundle than the stored {name}@{checked.version}"))
        key = hashlib.sha256(checked.label_id.encode()).hexdigest()[:16]
        path = self.store.advisories_dir(name) / f"{checked.version}-{key}.json"
        status = "known" if path.exists() else "recorded"
        if status == "recorded":
            write_json(path, {"label": label, "envelope": envelope, "received_at": utcnow(),
                              "who": who})
        try:
            floor, advisory = self.security_floor(name)
        except AdvisoryUnreadable as exc:  # this label is kept; the floor stays unknown
            self.store.append_history(name, {**record, "result": status, "floor": None,
                                             "problem": str(exc)})
            return {"status": status, "name": name, "label_id": checked.label_id,
                    "floor": None, "floor_advisory": None, "floor_problem": str(exc)}
        self.store.append_history(name, {**record, "result": status, "floor": floor})
        return {"status": status, "name": name, "label_id": checked.label_id,
                "floor": floor, "floor_advisory": advisory}

    # --- approvals (recorded for the publisher; enforcement belongs to the rollout) ------------
    def add_approval(self, name: str, who: str, approval: Any,
                     envelope: Any) -> dict[str, Any]:
        """Record a stage approval in history. With `[trust] approval_keys` configured it
        must be signed by enough of them; without, it is recorded as unverified."""
        from hotrelease.trust.approvals import Approval

        self.plugin(name, who=who, action="approval")
        record: dict[str, Any] = {"action": "approval", "who": who}
        try:
            parsed = Approval.from_dict(approval)
            record.update({"version": parsed.version, "stage": parsed.stage})
            if parsed.name != name:
                raise IdentityMismatchError(f"approval is for plugin {parsed.name!r}, "
                                            f"not {name!r}")
            if self.clock() >= parsed.expires:
                raise ExpiredError(f"approval for stage {parsed.stage} has expired")
            verified = False
            if self.config.approval_keys:
                if envelope is None:
                    raise SignatureError("this agent requires approvals signed by an "
                                         "approver key; the approval has no signature")
                verify_signed_json(approval, Envelope.from_dict(envelope),
                                   payload_type=APPROVAL_TYPE,
                                   trusted=self.config.approval_keys,
                                   threshold=self.config.approval_threshold,
                                   what="approval")
                verified = True
        except (VerificationError, ValueError) as exc:
            error = exc if isinstance(exc, VerificationError) else ManifestFormatError(
                f"approval: {exc}")
            raise self.refuse(name, record, error) from None
        # The envelope is kept with it: a publisher that finds this approval on the fleet
        # hands both on to agents that require signed approvals.
        self.store.append_history(name, {**record, "result": "recorded", "approval": approval,
                                         "envelope": envelope,
                                         "signed": envelope is not None,
                                         "verified": verified})
        return {"status": "recorded", "name": name, "stage": parsed.stage,
                "verified": verified}

    # --- start and stop ---------------------------------------------------------------------------
    def recover(self) -> list[dict[str, Any]]:
        """Start-up: finish or undo what a crash interrupted (see `recovery.py`)."""
        from hotrelease.agent.recovery import recover

        return recover(self)

    def shutdown(self) -> None:
        """The server stopped: no hook the agent started may outlive it."""
        terminate_running_hooks()



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


def _now() -> float:
    return time.perf_counter()


def _ms(start: float) -> float:
    return round((_now() - start) * 1000, 3)
