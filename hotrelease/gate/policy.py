"""Release policy: the knobs that decide class -> lane. Pure data with safe defaults.

The defaults are the product's promise: only a label signed by a security-team key sends an
update down the urgent lane; a security label on a major bump still goes urgent but needs a
release manager's approval; prereleases stay on canary; downgrades are refused.

`Reason` is what every gate rule reports when it fires (classify, route, decision). The base
of the gate: imports nothing from hotrelease.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SIGNED_LABEL = "signed-label"
TAG_TRAILER = "tag-trailer"
COMMIT_TRAILER = "commit-trailer"
MR_LABEL = "mr-label"
SECURITY_SOURCES = (SIGNED_LABEL, TAG_TRAILER, COMMIT_TRAILER, MR_LABEL)
SOURCE_WORDS = {SIGNED_LABEL: "signed label", TAG_TRAILER: "tag trailer",
                COMMIT_TRAILER: "commit trailer", MR_LABEL: "merge-request label"}

SECURITY_ON_MAJOR = ("urgent-with-approval", "urgent", "scheduled")
LANES = ("urgent", "scheduled")
BASELINE_SOURCES = ("git", "fleet")
CLASSES = ("major", "feature", "patch", "security", "no-change", "downgrade")


@dataclass(frozen=True)
class Policy:
    # Which evidence may make an update a security patch. Unsigned sources are always
    # reported; they only count when listed here.
    security_sources: tuple[str, ...] = (SIGNED_LABEL,)
    # Merge-request labels (CI_MERGE_REQUEST_LABELS) that claim "security".
    mr_security_labels: tuple[str, ...] = ("security",)
    # 0.y.z: a minor bump is breaking (SemVer item 4 gives no stability below 1.0.0).
    zero_minor_is_major: bool = True
    # Prereleases (1.2.0-rc.1) go to the canary stage only unless this is true.
    allow_prerelease: bool = False
    security_on_major: str = "urgent-with-approval"
    # A signed security label may pierce a freeze (the freeze must allow it too).
    break_glass: bool = True
    # Classes whose rollout needs a release manager's approval after canary.
    approval_classes: tuple[str, ...] = ("major",)
    # Lane for an explicit --rollback to a lower version.
    rollback_lane: str = "scheduled"
    # Where "the version running now" comes from when --from is not given: "git" (the
    # highest release tag below the candidate) or "fleet" (the highest version the
    # configured agents report, falling back to git when no node runs the plugin yet).
    baseline: str = "git"

    def to_dict(self) -> dict[str, Any]:
        return {"security_sources": list(self.security_sources),
                "mr_security_labels": list(self.mr_security_labels),
                "zero_minor_is_major": self.zero_minor_is_major,
                "allow_prerelease": self.allow_prerelease,
                "security_on_major": self.security_on_major,
                "break_glass": self.break_glass,
                "approval_classes": list(self.approval_classes),
                "rollback_lane": self.rollback_lane, "baseline": self.baseline}


@dataclass(frozen=True)
class Reason:
    """A rule that fired, and why (the `rules:` lines of `classify` and `plan`)."""

    rule: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "message": self.message}
