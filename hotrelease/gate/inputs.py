"""Gather the inputs of a release decision (config, git, labels, CI variables), then decide.

This is the I/O half: it reads files, git and the environment, and hands plain data to the
pure `classify.classify()` and `decision.decide()`. `decide_release()` is the one entry point
for the CLI (`classify`, `plan`), the GitLab child pipeline and `publish`.

What lies above the gate arrives injected: the rollout config's stages (`stages`, built by
`config.inventory.lane_stages`) and the versions the fleet runs (`fleet_baseline`, from
`rollout.baseline`). Imports `gate`, `build.git` and `trust` only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import semver

from hotrelease.errors import UsageError
from hotrelease.gate.classify import SecurityClaim, check_label, classify
from hotrelease.gate.decision import ReleaseDecision, decide
from hotrelease.gate.policy import COMMIT_TRAILER, MR_LABEL, SIGNED_LABEL, TAG_TRAILER, Policy
from hotrelease.gate.schedule import Schedule
from hotrelease.gate.stages import LaneStages, Stages
from hotrelease.gate.versioning import highest_tag_below
from hotrelease.trust.canonical import strict_loads
from hotrelease.trust.versions import parse_version

SECURITY_TRAILER = "Security-Advisory"
MR_LABELS_VARIABLE = "CI_MERGE_REQUEST_LABELS"

# (plugin name, candidate) -> the highest other version the fleet runs and where that was
# seen, or None when no reachable node runs the plugin yet.
FleetBaseline = Callable[[str, semver.Version], tuple[semver.Version, str] | None]


@dataclass
class GitFacts:
    """What git says about a candidate: the baseline below it, and security trailers."""

    baseline: tuple[semver.Version, str] | None = None
    claims: list[SecurityClaim] = field(default_factory=list)
    found: bool = False


def _candidate_tag(tags: Sequence[str], version: str) -> str | None:
    for tag in (f"v{version}", version, f"V{version}"):
        if tag in tags:
            return tag
    return None


def read_git(source: Path | Any, candidate: semver.Version, *,
             commit: str | None = None) -> GitFacts:
    """Baseline = highest non-prerelease SemVer tag below the candidate; trailers from the
    candidate's tag message and its commit (else `commit`, else HEAD).

    `source` is a path inside a repository, or a `build.git.GitView` already opened (and
    already listing tags) by the caller; None from `open_view` means "not in git"."""
    from hotrelease.build.git import commit_message, open_view, tag_message, trailer_values

    view = open_view(source) if isinstance(source, Path) else source
    if view is None:
        return GitFacts()
    repo, tags = view.repo, view.tags()
    facts = GitFacts(highest_tag_below(candidate, tags), found=True)
    tag = _candidate_tag(tags, str(candidate))
    if tag is not None:
        for advisory in trailer_values(tag_message(repo, tag), SECURITY_TRAILER):
            facts.claims.append(SecurityClaim(TAG_TRAILER, f"tag {tag}", advisory))
    rev = tag or commit or "HEAD"
    for advisory in trailer_values(commit_message(repo, rev), SECURITY_TRAILER):
        facts.claims.append(SecurityClaim(COMMIT_TRAILER, f"commit {rev}", advisory))
    return facts


def mr_label_claims(env: Mapping[str, str], policy: Policy) -> list[SecurityClaim]:
    raw = env.get(MR_LABELS_VARIABLE, "")
    wanted = {w.lower() for w in policy.mr_security_labels}
    return [SecurityClaim(MR_LABEL, f"{MR_LABELS_VARIABLE} ({label})", None)
            for label in (p.strip() for p in raw.split(",")) if label.lower() in wanted]


def load_label_claim(path: Path, *, trusted: dict[str, Any], threshold: int, now: datetime,
                     name: str, version: str, bundle_sha256: str | None) -> SecurityClaim:
    """Read LABEL and LABEL.sig; anything wrong becomes the claim's `problem`, so the output
    says why the update is not treated as security instead of stopping."""
    from hotrelease.errors import HotreleaseError
    from hotrelease.trust.keys import Envelope

    try:
        data = strict_loads(path.read_bytes())
    except OSError as exc:
        return SecurityClaim(SIGNED_LABEL, str(path), signed=True,
                             problem=f"cannot read: {exc.strerror}")
    except ValueError as exc:  # strict: a duplicated key could be read two ways
        return SecurityClaim(SIGNED_LABEL, str(path), signed=True,
                             problem=f"not valid JSON ({exc})")
    try:
        envelope = Envelope.load(Path(f"{path}.sig"))
    except HotreleaseError as exc:
        advisory = data.get("advisory") if isinstance(data, dict) else None
        return SecurityClaim(SIGNED_LABEL, str(path), advisory if isinstance(advisory, str)
                             else None, signed=True, problem=str(exc))
    if not isinstance(data, dict):
        return SecurityClaim(SIGNED_LABEL, str(path), signed=True,
                             problem="not a label document")
    return check_label(data, envelope, where=str(path), trusted=trusted, threshold=threshold,
                       now=now, name=name, version=version, bundle_sha256=bundle_sha256)


def decide_release(cfg: Any | None = None, *, manifest: Any | None = None,
                   manifest_path: Path | None = None, name: str | None = None,
                   version: str | None = None, bundle_sha256: str | None = None,
                   baseline: str | None = None, repo: Path | Any | None = None,
                   labels: Sequence[Path] = (), env: Mapping[str, str] | None = None,
                   now: datetime, rollback: bool = False,
                   stages: LaneStages | Stages = (),
                   fleet_baseline: FleetBaseline | None = None) -> ReleaseDecision:
    """Decide class, lane, earliest start, approvals and plan digest for one release.

    `cfg` is a `ProjectConfig` (None: default policy, no windows, no security keys); only
    its policy, schedule, plugin name and security keys are read. The
    candidate comes from `manifest` (a `ReleaseManifest`) or `name` + `version`. Baseline:
    `baseline` if given, else the highest SemVer tag below the candidate in the git repository
    at `repo` (default: the current directory; or a `build.git.GitView` the caller opened
    early, so git lists tags while the rest is gathered). Labels: `labels`, else the
    default label file next to `manifest_path`. `env` supplies CI variables (default:
    os.environ). `stages`: the rollout config's stages (`config.inventory.lane_stages()`),
    or plain stage names, one list for every lane or one per lane (`{"urgent": [...],
    "scheduled": [...]}`); none given, no stage is planned. `fleet_baseline`: asked for the
    baseline when `policy.baseline` is "fleet" and `baseline` is not given (falling back to
    git when it answers None).
    """
    env = os.environ if env is None else env
    policy: Policy = cfg.policy if cfg is not None else Policy()
    schedule: Schedule = (cfg.schedule if cfg is not None and cfg.schedule is not None
                          else Schedule())
    if manifest is not None:
        name, version = manifest.name, manifest.version
        bundle_sha256 = bundle_sha256 or manifest.bundle.sha256
    name = name or (cfg.plugin.name if cfg is not None else None)
    if not name or not version:
        raise UsageError("give --manifest FILE, or --version V (and --name N without a config)")
    candidate = parse_version(version)
    commit = manifest.provenance.get("git_commit") if manifest is not None else None
    facts = read_git(Path.cwd() if repo is None else repo, candidate,
                     commit=commit if isinstance(commit, str) else None)
    fleet = (fleet_baseline(name, candidate) if fleet_baseline is not None
             and baseline is None and policy.baseline == "fleet" else None)
    if baseline is not None:
        base, source = parse_version(baseline), "--from"
    elif fleet is not None:
        base, source = fleet
    elif facts.baseline is not None:
        base, source = facts.baseline[0], f"git tag {facts.baseline[1]}"
    else:
        base, source = None, ("no release tag below the candidate" if facts.found
                              else "no git repository")
    claims = _label_claims(cfg, labels, manifest_path, name=name, version=version,
                           bundle_sha256=bundle_sha256, now=now)
    claims += facts.claims + mr_label_claims(env, policy)
    result = classify(candidate, base, claims=claims, policy=policy, rollback=rollback)
    return decide(result, name=name, bundle_sha256=bundle_sha256, baseline_source=source,
                  schedule=schedule, policy=policy, now=now, stages=stages)


def _label_claims(cfg: Any | None, labels: Sequence[Path], manifest_path: Path | None, *,
                  name: str, version: str, bundle_sha256: str | None,
                  now: datetime) -> list[SecurityClaim]:
    paths = list(labels)
    if not paths and manifest_path is not None:
        from hotrelease.trust.labels import label_path_for

        default = label_path_for(name, version, manifest_path.parent)
        paths = [default] if default.is_file() else []
    if not paths:
        return []
    from hotrelease.trust.keys import load_trusted

    trusted = load_trusted(cfg.trust.security_keys) if cfg is not None else {}
    threshold = cfg.trust.security_threshold if cfg is not None else 1
    return [load_label_claim(p, trusted=trusted, threshold=threshold, now=now, name=name,
                             version=version, bundle_sha256=bundle_sha256) for p in paths]
