"""Stage approvals on a node: recorded in history for the publisher (the fleet is its
ledger), and, with `[trust] approval_keys` configured, required to activate anything but a
rollback to a version the node ran.
"""

from __future__ import annotations

from typing import Any

from hotrelease.agent.core import AgentCore
from hotrelease.agent.wire import ApprovalResult
from hotrelease.errors import (
    ExpiredError,
    IdentityMismatchError,
    ManifestFormatError,
    PolicyError,
    SignatureError,
    VerificationError,
)
from hotrelease.trust.approvals import Approval, verify_signed_approval
from hotrelease.trust.keys import APPROVAL_TYPE, Envelope, verify_signed_json


class Approvals:
    def __init__(self, core: AgentCore) -> None:
        self.core = core

    def record(self, name: str, who: str, approval: Any, envelope: Any) -> ApprovalResult:
        """Record a stage approval in history. With `[trust] approval_keys` configured it
        must be signed by enough of them; without, it is recorded as unverified."""
        core = self.core
        core.plugin(name, who=who, action="approval")
        record: dict[str, Any] = {"action": "approval", "who": who}
        try:
            parsed = Approval.from_dict(approval)
            record.update({"version": parsed.version, "stage": parsed.stage})
            if parsed.name != name:
                raise IdentityMismatchError(f"approval is for plugin {parsed.name!r}, "
                                            f"not {name!r}")
            if core.clock() >= parsed.expires:
                raise ExpiredError(f"approval for stage {parsed.stage} has expired")
            verified = False
            if core.config.approval_keys:
                if envelope is None:
                    raise SignatureError("this agent requires approvals signed by an "
                                         "approver key; the approval has no signature")
                verify_signed_json(approval, Envelope.from_dict(envelope),
                                   payload_type=APPROVAL_TYPE,
                                   trusted=core.config.approval_keys,
                                   threshold=core.config.approval_threshold,
                                   what="approval")
                verified = True
        except (VerificationError, ValueError) as exc:
            error = exc if isinstance(exc, VerificationError) else ManifestFormatError(
                f"approval: {exc}")
            raise core.refuse(name, record, error) from None
        # The envelope is kept with it: a publisher that finds this approval on the fleet
        # hands both on to agents that require signed approvals.
        core.store.append_history(name, {**record, "result": "recorded", "approval": approval,
                                         "envelope": envelope,
                                         "signed": envelope is not None,
                                         "verified": verified})
        return ApprovalResult(status="recorded", name=name, stage=parsed.stage,
                              verified=verified)

    def check(self, name: str, version: str, bundle_sha256: str,
              record: dict[str, Any]) -> None:
        """With approver keys configured, this node activates nothing (except a rollback)
        without a stage approval signed by them for this exact build and naming this node:
        a CI token alone cannot push past the nodes ops left ungated."""
        core = self.core
        if not core.config.approval_keys:
            return
        given = record.get("approval")
        if not isinstance(given, dict) or not isinstance(given.get("approval"), dict) \
                or not isinstance(given.get("envelope"), dict):
            raise PolicyError(f"this node requires a signed stage approval to activate "
                              f"{name}@{version}", code="approval_required")
        verify_signed_approval(given["approval"], Envelope.from_dict(given["envelope"]),
                               trusted=core.config.approval_keys,
                               threshold=core.config.approval_threshold, name=name,
                               version=version, bundle_sha256=bundle_sha256, stage=None,
                               now=core.clock(), node=core.config.node_name)
