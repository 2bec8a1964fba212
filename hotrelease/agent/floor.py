"""The security floor: signed security labels (advisories) a node accepts, and the lowest
version they still allow to run.

Every label raises its plugin's floor to the version that fixes the advisory; nothing below
the floor is stored, activated or rolled back to. The floor fails closed: an advisory record
that cannot be read makes the floor unknown (`AdvisoryUnreadable`), and then nothing the
floor guards goes ahead.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hotrelease.agent.core import AgentCore, below
from hotrelease.agent.store import utcnow, write_json
from hotrelease.agent.wire import AdvisoryResult
from hotrelease.errors import (
    AdvisoryUnreadable,
    HotreleaseError,
    IdentityMismatchError,
    PolicyError,
    SignatureError,
    VerificationError,
)
from hotrelease.trust.keys import Envelope
from hotrelease.trust.labels import verify_label
from hotrelease.trust.manifest import check_version


class SecurityFloor:
    def __init__(self, core: AgentCore) -> None:
        self.core = core

    def floor(self, name: str) -> tuple[str | None, str | None]:
        """(floor version, advisory id): the highest fixing version among the labels seen.
        Fails closed: an advisory record that cannot be read raises `AdvisoryUnreadable`
        (the floor it holds is unknown, so no version can be shown to be above it)."""
        floor: str | None = None
        advisory: str | None = None
        directory = self.core.store.plugins / name / "advisories"
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
            if floor is None or below(floor, version):
                floor, advisory = version, found
        return floor, advisory

    def refusal(self, name: str, version: str) -> PolicyError | None:
        """Why the security floor forbids running `version` (None: it does not): below the
        floor, or the floor is unknown (an unreadable advisory)."""
        try:
            floor, advisory = self.floor(name)
        except AdvisoryUnreadable as exc:
            return exc
        if floor is not None and below(version, floor):
            return PolicyError(f"{name}@{version} is below the security floor {floor} "
                               f"({advisory})", code="below_security_floor")
        return None

    def check(self, name: str, version: str, record: dict[str, Any]) -> None:
        """Refuse (recorded) a version the floor forbids."""
        refusal = self.refusal(name, version)
        if refusal is not None:
            raise self.core.refuse(name, record, refusal)

    def add_advisory(self, name: str, who: str, label: Any, envelope: Any) -> AdvisoryResult:
        """Accept a security label signed by enough of `[trust] security_keys` for this
        plugin (and, if that version is stored, for its exact bundle); keep it and answer
        with the floor now."""
        core = self.core
        core.plugin(name, who=who, action="advisory")
        record: dict[str, Any] = {"action": "advisory", "who": who}
        if not core.config.security_keys:
            raise core.refuse(name, record, SignatureError(
                "this agent has no security keys configured; it cannot accept labels"))
        try:
            env = Envelope.from_dict(envelope)
            checked = verify_label(label, env, trusted=core.config.security_keys,
                                   threshold=core.config.security_threshold, now=core.clock(),
                                   name=name)
        except VerificationError as exc:
            raise core.refuse(name, record, exc) from None
        record.update({"version": checked.version, "advisory": checked.advisory,
                       "severity": checked.severity})
        info = core.release_info(name, checked.version)
        if info is not None and info.bundle_sha256 != checked.bundle_sha256:
            raise core.refuse(name, record, IdentityMismatchError(
                f"label is for a different bundle than the stored {name}@{checked.version}"))
        key = hashlib.sha256(checked.label_id.encode()).hexdigest()[:16]
        path = core.store.advisories_dir(name) / f"{checked.version}-{key}.json"
        status = "known" if path.exists() else "recorded"
        if status == "recorded":
            write_json(path, {"label": label, "envelope": envelope, "received_at": utcnow(),
                              "who": who})
        try:
            floor, advisory = self.floor(name)
        except AdvisoryUnreadable as exc:  # this label is kept; the floor stays unknown
            core.store.append_history(name, {**record, "result": status, "floor": None,
                                             "problem": str(exc)})
            return AdvisoryResult(status=status, name=name, label_id=checked.label_id,
                                  floor=None, floor_advisory=None, floor_problem=str(exc))
        core.store.append_history(name, {**record, "result": status, "floor": floor})
        return AdvisoryResult(status=status, name=name, label_id=checked.label_id,
                              floor=floor, floor_advisory=advisory)
