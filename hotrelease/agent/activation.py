"""Activation: switch a slot to a stored release, reload the host, check its health, and go
back by itself when that fails; a rollback is an activation of an earlier stored version.

Before every switch: the release still verifies under the keys trusted now, its files still
match, it is not below the security floor, it is not a downgrade (except as a rollback), and
it has the approval this node requires. One activation per slot at a time; a journal makes
every switch recoverable (`agent.recovery`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from hotrelease.agent.approvals import Approvals
from hotrelease.agent.config import PluginConfig
from hotrelease.agent.core import AgentCore, below, ms_since, now
from hotrelease.agent.floor import SecurityFloor
from hotrelease.agent.hooks import run_health, run_precheck, run_reload
from hotrelease.agent.store import crash_point, utcnow
from hotrelease.agent.wire import ActivateResult, Health, InProgress, PluginState
from hotrelease.errors import (
    Conflict,
    DigestMismatchError,
    ExpiredError,
    NotFound,
    PolicyError,
    SignatureError,
    ThresholdError,
    UsageError,
    VerificationError,
)
from hotrelease.trust.digest import sha256_file
from hotrelease.trust.keys import Envelope
from hotrelease.trust.manifest import FileEntry, ReleaseManifest
from hotrelease.trust.times import format_time
from hotrelease.trust.verify import verify_bundle_files, verify_manifest_document
from hotrelease.trust.versions import parse_version


def ran_versions(state: dict[str, Any]) -> set[str]:
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
    enforced when the agent has approver keys (see `Approvals.check`)."""

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


class Activation:
    def __init__(self, core: AgentCore, floor: SecurityFloor, approvals: Approvals) -> None:
        self.core = core
        self.floor = floor
        self.approvals = approvals
        self._locks = {name: threading.Lock() for name in core.config.plugins}
        # What an activation or rollback under way is doing, for the plugin state: a caller
        # that finds the slot busy waits for it and judges its outcome instead of failing.
        self._in_progress: dict[str, InProgress] = {}

    def activate(self, name: str, version: str | None, who: str, meta: Meta, *,
                 rollback: bool = False) -> ActivateResult:
        """Activate `version` of `name` (a rollback: `version` None is the previous one);
        one at a time per slot, a second caller is refused with activation_in_progress."""
        core = self.core
        action = "rollback" if rollback else "activate"
        pcfg = core.plugin(name, who=who, action=action)
        record: dict[str, Any] = {"action": action, "who": who, **meta.record()}
        lock = self._locks[name]
        if not lock.acquire(blocking=False):
            record["version"] = version
            raise core.refuse(name, record, Conflict(
                f"another activation of {name} is in progress", code="activation_in_progress"))
        try:
            self._in_progress[name] = InProgress(action=action, version=version,
                                                 since=utcnow(), release_id=meta.release_id)
            return self._activate_locked(pcfg, version, record, rollback=rollback)
        finally:
            self._in_progress.pop(name, None)
            lock.release()

    def in_progress(self, name: str) -> InProgress | None:
        """The activation or rollback of `name` under way (target version, since), if any."""
        return self._in_progress.get(name)

    def _activate_locked(self, pcfg: PluginConfig, version: str | None,
                         record: dict[str, Any], *, rollback: bool) -> ActivateResult:
        name = pcfg.name
        core = self.core
        state = core.store.load_state(name)
        old = state.get("current")
        if version is None:  # rollback to the previous version
            version = state.get("previous")
            if version is None:
                raise core.refuse(name, record, Conflict(
                    f"{name} has no previous version to roll back to",
                    code="nothing_to_roll_back"))
        record.update({"version": version, "from": old})
        core.check_version_param(name, version, record)
        info = core.release_info(name, version)
        if info is None:
            raise core.refuse(name, record, NotFound(
                f"{name}@{version} is not stored on this node (upload it first)",
                code="not_stored"))
        record["release_id"] = info.release_id
        self.floor.check(name, version, record)
        if version == old:
            core.store.append_history(name, {**record, "result": "unchanged",
                                             "reason": "already the current version"})
            return ActivateResult(result="unchanged", name=name, version=version,
                                  current=version, state=PluginState.from_dict(state))
        highest = state.get("highest_activated")
        if not rollback and highest is not None and below(version, highest):
            raise core.refuse(name, record, PolicyError(
                f"{name}@{version} is lower than {highest}, already activated on this node; "
                "use the rollback endpoint to go back to a stored version",
                code="downgrade"))
        # A rollback skips the approval only to go back to a version this node ran; anything
        # else is an activation under another name and needs what an activation needs.
        known_good = rollback and version in ran_versions(state)
        allow_expired = bool(record.pop("allow_expired", False))
        if allow_expired:
            if not known_good:
                raise core.refuse(name, record, UsageError(
                    f"allow_expired applies only to a rollback to a version this node ran "
                    f"before; {name}@{version} never ran here", code="bad_request"))
            record["override"] = "allow_expired"
        try:
            manifest = self.check_release(name, version, allow_expired=allow_expired)
            if not known_good:
                self.approvals.check(name, version, info.bundle_sha256, record)
        except ExpiredError as exc:
            hint = ("; a rollback to a version this node ran before may override that with "
                    "allow_expired" if known_good else "")
            raise core.refuse(name, record, ExpiredError(f"{exc}{hint}")) from None
        except (VerificationError, PolicyError) as exc:
            raise core.refuse(name, record, exc) from None
        if allow_expired and core.clock() >= manifest.expires:
            record["expired"] = format_time(manifest.expires)
        ok, detail = run_precheck(pcfg.precheck, name=name, version=version,
                                  release_dir=str(core.store.release_dir(name, version)))
        if not ok:
            raise core.refuse(name, record, PolicyError(
                f"precheck refused {name}@{version} before the switch: {detail}",
                code="precheck_failed"))
        return self._switch(pcfg, state, old, version, record)

    def check_release(self, name: str, version: str, *, allow_expired: bool = False) -> \
            ReleaseManifest:
        """Before every switch to a stored release: its manifest is still signed by enough
        of the keys trusted *now* (a key removed since it was stored no longer counts), not
        expired (unless `allow_expired`), and the stored files still match it (disk rot,
        tampering)."""
        core = self.core
        rdir = core.store.release_dir(name, version)
        try:
            data = (rdir / "manifest.json").read_bytes()
            envelope = Envelope.from_bytes((rdir / "manifest.json.sig").read_bytes(),
                                           f"stored release {name}@{version} signature")
        except OSError as exc:
            raise DigestMismatchError(f"stored release {name}@{version}: cannot read its "
                                      f"signed manifest ({exc.strerror})") from None
        try:
            manifest, _ = verify_manifest_document(
                data, envelope, trusted=core.config.trusted, threshold=core.config.threshold,
                now=core.clock(), source=f"stored release {name}@{version}",
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
                record: dict[str, Any]) -> ActivateResult:
        name, store = pcfg.name, self.core.store
        timings: dict[str, float] = {}
        t0 = now()
        store.write_journal(name, {"op": record["action"], "from": old, "to": new,
                                   "who": record.get("who"), "started_at": utcnow()})
        crash_point("switch.journal")
        store.switch_current(name, new)
        crash_point("switch.swapped")
        timings["switch_ms"] = ms_since(t0)
        current_path = str(store.current_link(name))
        t1 = now()
        ok, reload_detail = run_reload(pcfg.reload, name=name, version=new,
                                       current_path=current_path)
        timings["reload_ms"] = ms_since(t1)
        health_ok, health_detail, probes = False, "not run: reload failed", 0
        if ok:
            t2 = now()
            health_ok, health_detail, probes = run_health(
                pcfg.health, name=name, version=new, current_path=current_path,
                on_probe=lambda n: crash_point("activate.health"))
            timings["health_ms"] = ms_since(t2)
        health = _verdict(health_ok, health_detail, probes, new)
        if ok and health_ok:
            highest = state.get("highest_activated")
            state.update({
                "current": new, "previous": old, "state": "active", "activated_at": utcnow(),
                "highest_activated": new if highest is None or below(highest, new)
                else highest,
                "ran": sorted(ran_versions(state) | {new}, key=parse_version),
                "health": health.to_dict(), "last_result": "activated",
                "release_id": record.get("release_id")})
            store.save_state(name, state)
            crash_point("activate.committed")
            store.append_history(name, {**record, "result": "activated",
                                        "reason": health_detail, "timings": timings})
            store.clear_journal(name)
            return ActivateResult(result="activated", name=name, version=new, from_version=old,
                                  current=new, health=health, timings=timings,
                                  state=PluginState.from_dict(state))
        reason = (f"reload failed: {reload_detail}" if not ok
                  else f"health check failed: {health_detail}")
        return self._auto_rollback(pcfg, state, old, new, record, reason, health, timings)

    def _auto_rollback(self, pcfg: PluginConfig, state: dict[str, Any], old: str | None,
                       new: str, record: dict[str, Any], reason: str, failed_health: Health,
                       timings: dict[str, float]) -> ActivateResult:
        name, store = pcfg.name, self.core.store
        store.write_journal(name, {"op": record["action"], "from": old, "to": new,
                                   "phase": "rolling_back", "reason": reason,
                                   "started_at": utcnow()})
        refused = self._cannot_go_back(name, old, record) if old is not None else None
        if refused is not None:
            # Going back would run a version with a known vulnerability, or one no longer
            # trusted (or the floor is unknown): stay, flag it.
            code, why = refused
            state.update({"current": new, "previous": old, "state": "unhealthy",
                          "activated_at": utcnow(), "health": failed_health.to_dict(),
                          "last_result": "failed"})
            store.save_state(name, state)
            detail = f"{reason}; automatic rollback to {old} refused: {why}"
            store.append_history(name, {**record, "result": "failed", "code": code,
                                        "reason": detail})
            store.clear_journal(name)
            return ActivateResult(result="failed", name=name, version=new, from_version=old,
                                  current=new, reason=detail, health=failed_health,
                                  timings=timings, state=PluginState.from_dict(state))
        store.switch_current(name, old)
        crash_point("activate.rolling_back")
        back_health: Health | None = None
        if old is not None:
            current_path = str(store.current_link(name))
            ok, detail = run_reload(pcfg.reload, name=name, version=old,
                                    current_path=current_path)
            if ok:
                h_ok, h_detail, probes = run_health(pcfg.health, name=name, version=old,
                                                    current_path=current_path)
            else:
                h_ok, h_detail, probes = False, f"reload failed: {detail}", 0
            back_health = _verdict(h_ok, h_detail, probes, old)
        back = None if back_health is None else back_health.to_dict()
        state.update({"current": old, "state": "rolled_back" if old is not None else "empty",
                      "health": back or failed_health.to_dict(), "last_result": "rolled_back",
                      "last_failure": {"version": new, "reason": reason, "at": utcnow()}})
        store.save_state(name, state)
        store.append_history(name, {**record, "result": "rolled_back", "reason": reason,
                                    "rolled_back_to": old, "rollback_health": back})
        store.clear_journal(name)
        return ActivateResult(result="rolled_back", name=name, version=new, from_version=old,
                              current=old, reason=reason, health=failed_health,
                              rollback_health=back_health, timings=timings,
                              state=PluginState.from_dict(state))

    def _cannot_go_back(self, name: str, old: str, record: dict[str, Any]) -> \
            tuple[str, str] | None:
        """Why the automatic rollback may not return to `old`, as (code, reason); None when
        it may. `old` ran a moment ago, so an expired manifest does not stop it (the expiry
        is noted in `record`); a key removed since, the security floor and the files do."""
        refusal = self.floor.refusal(name, old)
        if refusal is not None:
            return refusal.code, str(refusal)
        try:
            manifest = self.check_release(name, old, allow_expired=True)
        except VerificationError as exc:
            return exc.code, f"{name}@{old} no longer verifies ({exc})"
        if self.core.clock() >= manifest.expires:
            record["rollback_target_expired"] = format_time(manifest.expires)
        return None


def _verdict(ok: bool, detail: str, probes: int, version: str) -> Health:
    return Health(ok=ok, status="pass" if ok else "fail", detail=detail, probes=probes,
                  version=version, checked_at=utcnow())
