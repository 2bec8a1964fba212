"""Stage approvals: a release manager's statement "stage S of this exact build may start".

An approval is bound to plugin name, version, bundle digest, stage and the nodes of that
stage, so a rebuild needs a new approval and an approval for `wave-1` cannot open `all`.
Signed under its own payload type (APPROVAL_TYPE) when approver keys are in use; agents that
have approver keys configured verify it themselves, so a CI token alone cannot push past
the stages ops left ungated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hotrelease.errors import ExpiredError, IdentityMismatchError, ManifestFormatError
from hotrelease.trust.canonical import canonical_bytes
from hotrelease.trust.keys import APPROVAL_TYPE, Envelope, PublicKey, verify_signed_json
from hotrelease.trust.manifest import _expect, check_name, check_version, parse_time
from hotrelease.trust.times import format_time

APPROVAL_FORMAT = "hotrelease/approval/v1"


@dataclass(frozen=True)
class Approval:
    name: str
    version: str
    bundle_sha256: str
    stage: str
    approved_by: str
    approved_at: datetime
    expires: datetime
    nodes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"format": APPROVAL_FORMAT, "name": self.name, "version": self.version,
                "bundle_sha256": self.bundle_sha256, "stage": self.stage,
                "nodes": list(self.nodes), "approved_by": self.approved_by,
                "approved_at": format_time(self.approved_at),
                "expires": format_time(self.expires)}

    @classmethod
    def from_dict(cls, data: Any) -> Approval:
        _expect(data, "approval", {"format": str, "name": str, "version": str,
                                   "bundle_sha256": str, "stage": str, "nodes": list,
                                   "approved_by": str, "approved_at": str, "expires": str})
        if data["format"] != APPROVAL_FORMAT:
            raise ManifestFormatError(f"approval.format: expected {APPROVAL_FORMAT!r}")
        if not all(isinstance(n, str) for n in data["nodes"]):
            raise ManifestFormatError("approval.nodes: expected a list of node names")
        return cls(check_name(data["name"]), check_version(data["version"]),
                   data["bundle_sha256"], data["stage"], data["approved_by"],
                   parse_time(data["approved_at"], "approval.approved_at"),
                   parse_time(data["expires"], "approval.expires"), tuple(data["nodes"]))

    def canonical_bytes(self) -> bytes:
        return canonical_bytes(self.to_dict())

    def sign(self, private: Any) -> Envelope:
        envelope = Envelope(APPROVAL_TYPE)
        envelope.add_signature(self.canonical_bytes(), private)
        return envelope


def check_approval(approval: Approval, *, name: str, version: str, bundle_sha256: str,
                   stage: str | None, now: datetime, node: str | None = None) -> None:
    """Binding and expiry; raises a precise error on the first mismatch."""
    if (approval.name, approval.version) != (name, version):
        raise IdentityMismatchError(f"approval is for {approval.name}@{approval.version}, "
                                    f"not {name}@{version}")
    if approval.bundle_sha256 != bundle_sha256:
        raise IdentityMismatchError("approval is for another bundle digest (rebuilt since "
                                    "it was approved?)")
    if stage is not None and approval.stage != stage:
        raise IdentityMismatchError(f"approval is for stage {approval.stage!r}, not {stage!r}")
    if node is not None and approval.nodes and node not in approval.nodes:
        raise IdentityMismatchError(f"approval for stage {approval.stage!r} does not name "
                                    f"node {node!r}")
    if now >= approval.expires:
        raise ExpiredError(f"approval for stage {approval.stage!r} expired at "
                           f"{format_time(approval.expires)}")


def verify_signed_approval(data: dict[str, Any], envelope: Envelope, *,
                           trusted: dict[str, PublicKey], threshold: int, name: str,
                           version: str, bundle_sha256: str, stage: str | None,
                           now: datetime, node: str | None = None) -> Approval:
    verify_signed_json(data, envelope, payload_type=APPROVAL_TYPE, trusted=trusted,
                       threshold=threshold, what="approval")
    approval = Approval.from_dict(data)
    check_approval(approval, name=name, version=version, bundle_sha256=bundle_sha256,
                   stage=stage, now=now, node=node)
    return approval
