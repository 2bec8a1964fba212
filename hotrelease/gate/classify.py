"""Classify an update: major / feature / patch / security / no-change / downgrade.

Pure: versions, security evidence and policy in; a classification with every rule that fired
out. No git, no network, no clock reads (label expiry is checked against an explicit `now`).

Rules (see docs/classify.md):
- precedence comes from the `semver` library; build metadata is ignored;
- 0.y.z: a minor bump counts as major when `policy.zero_minor_is_major` (the default),
  because SemVer promises no stability below 1.0.0; a 0.y.z patch bump stays a patch;
- no baseline (first release) counts as major;
- a change only in the prerelease part (1.2.0-rc.1 -> 1.2.0) counts as patch;
- prerelease candidates are canary-only unless policy allows them;
- security only from evidence whose source policy accepts; by default that is a label signed
  by the security team's keys, valid for this name, version and bundle digest, not expired.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import semver

from hotrelease.errors import HotreleaseError
from hotrelease.gate.policy import SIGNED_LABEL, SOURCE_WORDS, Policy, Reason

if TYPE_CHECKING:  # cryptography is imported only when a label is actually checked
    from hotrelease.trust.keys import PublicKey

MAJOR, MINOR, PATCH, PRERELEASE = "major", "minor", "patch", "prerelease"
NONE, DOWNGRADE, INITIAL = "none", "downgrade", "initial"


@dataclass(frozen=True)
class SecurityClaim:
    """One piece of evidence that an update is a security fix, and whether it holds."""

    source: str  # one of policy.SECURITY_SOURCES
    where: str  # file, tag or variable it came from
    advisory: str | None = None
    signed: bool = False
    problem: str | None = None  # why a signed label was rejected
    label_digest: str | None = None  # sha256 of the label's canonical bytes

    @property
    def valid(self) -> bool:
        return self.problem is None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "where": self.where, "advisory": self.advisory,
                "signed": self.signed, "valid": self.valid, "problem": self.problem}


@dataclass
class Classification:
    release_class: str
    bump: str
    candidate: semver.Version
    baseline: semver.Version | None
    canary_only: bool = False
    needs_approval: bool = False
    rollback: bool = False
    refused: str | None = None
    security: SecurityClaim | None = None  # the claim that made it "security"
    claims: list[SecurityClaim] = field(default_factory=list)
    reasons: list[Reason] = field(default_factory=list)

    def why(self, rule: str, message: str) -> None:
        self.reasons.append(Reason(rule, message))


def compute_bump(baseline: semver.Version | None, candidate: semver.Version, *,
                 zero_minor_is_major: bool = True) -> tuple[str, str]:
    """(bump kind, explanation) from SemVer precedence."""
    if baseline is None:
        return INITIAL, f"no baseline: {candidate} is the first release"
    order = candidate.compare(baseline)
    if order == 0:
        extra = (" (build metadata differs and is ignored for precedence)"
                 if candidate.build != baseline.build else "")
        return NONE, f"{candidate} has the same precedence as {baseline}{extra}"
    if order < 0:
        return DOWNGRADE, f"{candidate} is lower than {baseline}"
    if candidate.major != baseline.major:
        return MAJOR, f"major bump {baseline} -> {candidate}"
    if candidate.minor != baseline.minor:
        if candidate.major == 0 and zero_minor_is_major:
            return MAJOR, (f"0.y.z minor bump {baseline} -> {candidate} counts as major "
                           "(policy.zero_minor_is_major)")
        return MINOR, f"minor bump {baseline} -> {candidate}"
    if candidate.patch != baseline.patch:
        return PATCH, f"patch bump {baseline} -> {candidate}"
    return PRERELEASE, f"only the prerelease part changed {baseline} -> {candidate}: patch"


def check_label(data: dict[str, Any], envelope: Any, *, where: str,
                trusted: dict[str, PublicKey], threshold: int, now: datetime, name: str,
                version: str, bundle_sha256: str | None) -> SecurityClaim:
    """Verify a signed label into a claim; a failure becomes the claim's `problem`."""
    import hashlib

    from hotrelease.trust.canonical import canonical_bytes
    from hotrelease.trust.labels import verify_label

    if not trusted:
        return SecurityClaim(SIGNED_LABEL, where, data.get("advisory"), signed=True,
                             problem="no security keys configured ([trust] security_keys)")
    if bundle_sha256 is None:
        return SecurityClaim(SIGNED_LABEL, where, data.get("advisory"), signed=True,
                             problem="the bundle digest is unknown, so the label's binding "
                                     "cannot be checked (give --manifest or --bundle-sha256)")
    try:
        label = verify_label(data, envelope, trusted=trusted, threshold=threshold, now=now,
                             name=name, version=version, bundle_sha256=bundle_sha256)
    except HotreleaseError as exc:
        advisory = data.get("advisory") if isinstance(data, dict) else None
        return SecurityClaim(SIGNED_LABEL, where, advisory if isinstance(advisory, str) else None,
                             signed=True, problem=str(exc))
    return SecurityClaim(SIGNED_LABEL, where, label.advisory, signed=True,
                         label_digest=hashlib.sha256(canonical_bytes(data)).hexdigest())


def _class_for_bump(bump: str) -> str:
    return {MAJOR: "major", INITIAL: "major", MINOR: "feature", PATCH: "patch",
            PRERELEASE: "patch", NONE: "no-change", DOWNGRADE: "downgrade"}[bump]


def _apply_security(result: Classification, claims: Sequence[SecurityClaim],
                    policy: Policy) -> None:
    """Pick the claim that counts (signed first) and explain every one that does not."""
    upgrade = result.bump not in (NONE, DOWNGRADE)
    counting = [c for c in claims if c.valid and c.source in policy.security_sources]
    counting.sort(key=lambda c: not c.signed)
    chosen = counting[0] if counting and upgrade else None
    fallback = "scheduled"
    for claim in claims:
        words = SOURCE_WORDS.get(claim.source, claim.source)
        if claim is chosen:
            continue
        if not claim.valid:
            result.why("security.rejected", f"security label {claim.where} rejected: "
                                            f"{claim.problem}: not treated as security")
        elif not upgrade:
            result.why("security.ignored", f"security claimed by {words} ignored: "
                                           f"{result.release_class} is not an upgrade")
        elif claim.source not in policy.security_sources:
            result.why("security.unsigned", f"security claimed by {words}, not signed: "
                                            f"{fallback}")
        else:
            result.why("security.redundant", f"security also claimed by {words}")
    if chosen is None:
        return
    words = SOURCE_WORDS.get(chosen.source, chosen.source)
    trust = "signed by a trusted security key" if chosen.signed else \
        f"not signed, but policy.security_sources includes {chosen.source}"
    if result.bump in (MAJOR, INITIAL):
        if policy.security_on_major == "scheduled":
            result.why("security.on-major", f"security ({chosen.advisory}, {words}) on a major "
                                            "bump: stays major (policy.security_on_major = "
                                            "scheduled)")
            return
        if policy.security_on_major == "urgent-with-approval":
            result.needs_approval = True
            result.why("security.on-major", "security label on a major bump: urgent, but a "
                                            "release manager must approve (policy."
                                            "security_on_major = urgent-with-approval)")
    result.release_class, result.security = "security", chosen
    result.why("security.accepted", f"security patch for {chosen.advisory}: {words} "
                                    f"{chosen.where}, {trust}")


def classify(candidate: semver.Version, baseline: semver.Version | None, *,
             claims: Sequence[SecurityClaim] = (), policy: Policy | None = None,
             rollback: bool = False) -> Classification:
    policy = policy or Policy()
    bump, explanation = compute_bump(baseline, candidate,
                                     zero_minor_is_major=policy.zero_minor_is_major)
    result = Classification(_class_for_bump(bump), bump, candidate, baseline,
                            rollback=rollback, claims=list(claims))
    result.why(f"bump.{bump}", explanation)
    if bump == DOWNGRADE:
        if rollback:
            result.needs_approval = True
            result.why("downgrade.rollback", "explicit rollback: allowed, approval required")
        else:
            result.refused = (f"{candidate} is lower than the baseline {baseline}: downgrade "
                              "refused (use --rollback to roll back on purpose)")
            result.why("downgrade.refused", result.refused)
    _apply_security(result, claims, policy)
    if candidate.prerelease is not None and bump not in (NONE, DOWNGRADE):
        if policy.allow_prerelease:
            result.why("prerelease.allowed", f"{candidate} is a prerelease; policy."
                                             "allow_prerelease lets it past canary")
        else:
            result.canary_only = True
            result.why("prerelease.canary-only", f"{candidate} is a prerelease: canary only "
                                                 "(policy.allow_prerelease = false)")
    if result.release_class in policy.approval_classes and not result.needs_approval:
        result.needs_approval = True
        result.why("approval.class", f"class {result.release_class} needs a release "
                                     "manager's approval (policy.approval_classes)")
    return result
