"""Classification: pure table tests, policy knobs, and real git repositories made in temp
dirs (lightweight tags, annotated tags with trailers, commits with trailers)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import semver
from conftest import GitRepo

from hotrelease.build.git import parse_trailers, trailer_values
from hotrelease.errors import VersionError
from hotrelease.gate.classify import SecurityClaim, classify
from hotrelease.gate.inputs import decide_release, mr_label_claims, read_git
from hotrelease.gate.policy import COMMIT_TRAILER, MR_LABEL, SIGNED_LABEL, TAG_TRAILER, Policy

V = semver.Version.parse
NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
SIGNED = SecurityClaim(SIGNED_LABEL, "greeter-1.2.1.security.json", "CVE-2026-1234", signed=True,
                       label_digest="ab" * 32)
TRAILER = SecurityClaim(COMMIT_TRAILER, "commit HEAD", "CVE-2026-1234")


# --- pure ---------------------------------------------------------------------------------


@pytest.mark.parametrize("base,cand,expected", [
    ("1.2.0", "2.0.0", "major"), ("1.2.0", "1.3.0", "feature"), ("1.2.0", "1.2.1", "patch"),
    ("1.2.0", "1.2.0", "no-change"), ("1.2.0+b1", "1.2.0+b2", "no-change"),
    ("1.2.0", "1.1.9", "downgrade"), ("0.4.2", "0.5.0", "major"), ("0.4.2", "0.4.3", "patch"),
    ("1.3.0-rc.1", "1.3.0", "patch"), (None, "1.0.0", "major"),
])
def test_class_table(base: str | None, cand: str, expected: str) -> None:
    assert classify(V(cand), V(base) if base else None).release_class == expected


def test_signed_label_makes_a_patch_security() -> None:
    c = classify(V("1.2.1"), V("1.2.0"), claims=[SIGNED])
    assert c.release_class == "security" and c.security is SIGNED and not c.needs_approval


def test_unsigned_trailer_is_reported_not_obeyed() -> None:
    c = classify(V("1.2.1"), V("1.2.0"), claims=[TRAILER])
    assert c.release_class == "patch"
    assert "security claimed by commit trailer, not signed: scheduled" in \
        [r.message for r in c.reasons]


def test_policy_may_accept_an_unsigned_source() -> None:
    c = classify(V("1.2.1"), V("1.2.0"), claims=[TRAILER],
                 policy=Policy(security_sources=(SIGNED_LABEL, COMMIT_TRAILER)))
    assert c.release_class == "security" and c.security is not None and not c.security.signed


def test_signed_label_wins_over_unsigned_claims() -> None:
    c = classify(V("1.2.1"), V("1.2.0"), claims=[TRAILER, SIGNED],
                 policy=Policy(security_sources=(SIGNED_LABEL, COMMIT_TRAILER)))
    assert c.security is SIGNED


def test_rejected_label_says_why_with_passing_twin() -> None:
    bad = SecurityClaim(SIGNED_LABEL, "x.json", "CVE-2026-1234", signed=True,
                        problem="security label expired at 2026-01-01T00:00:00Z")
    c = classify(V("1.2.1"), V("1.2.0"), claims=[bad])
    assert c.release_class == "patch"
    assert any("rejected: security label expired" in r.message and "not treated as security"
               in r.message for r in c.reasons)
    assert classify(V("1.2.1"), V("1.2.0"), claims=[SIGNED]).release_class == "security"


@pytest.mark.parametrize("knob,cls,approval", [
    ("urgent-with-approval", "security", True), ("urgent", "security", False),
    ("scheduled", "major", True),
])
def test_security_on_major_knob(knob: str, cls: str, approval: bool) -> None:
    c = classify(V("2.0.0"), V("1.2.0"), claims=[SIGNED], policy=Policy(security_on_major=knob,
                                                                        approval_classes=("major",)))
    assert (c.release_class, c.needs_approval) == (cls, approval)


def test_security_claim_on_no_change_is_ignored() -> None:
    c = classify(V("1.2.0"), V("1.2.0"), claims=[SIGNED])
    assert c.release_class == "no-change"
    assert any("ignored" in r.message for r in c.reasons)


def test_downgrade_refused_unless_rollback() -> None:
    refused = classify(V("1.1.0"), V("1.2.0"))
    assert refused.refused is not None and "--rollback" in refused.refused
    allowed = classify(V("1.1.0"), V("1.2.0"), rollback=True)
    assert allowed.refused is None and allowed.needs_approval


def test_prerelease_is_canary_only_unless_policy_allows() -> None:
    assert classify(V("1.3.0-rc.1"), V("1.2.0")).canary_only
    assert not classify(V("1.3.0-rc.1"), V("1.2.0"), policy=Policy(allow_prerelease=True)
                        ).canary_only
    assert not classify(V("1.3.0"), V("1.2.0")).canary_only


def test_major_needs_approval_by_default_feature_does_not() -> None:
    assert classify(V("2.0.0"), V("1.2.0")).needs_approval
    assert not classify(V("1.3.0"), V("1.2.0")).needs_approval


# --- trailers -----------------------------------------------------------------------------


def test_parse_trailers_last_paragraph_only() -> None:
    msg = "fix login\n\nSecurity-Advisory: CVE-2026-0001 in body\n\nSigned-off-by: A <a@b>\n" \
          "Security-Advisory: CVE-2026-1234\n"
    assert trailer_values(msg, "security-advisory") == ["CVE-2026-1234"]


@pytest.mark.parametrize("msg", [
    "Security-Advisory: CVE-2026-1234",  # subject line alone is not a trailer block
    "fix\n\nSecurity-Advisory: CVE-2026-1234\nthis line is prose, so no trailer block",
    None, "",
])
def test_parse_trailers_refuses_non_trailers(msg: str | None) -> None:
    assert trailer_values(msg, "Security-Advisory") == []


def test_parse_trailers_cuts_pgp_signature() -> None:
    msg = ("v1\n\nSecurity-Advisory: CVE-2026-1234\n-----BEGIN PGP SIGNATURE-----\n\nabc: d\n"
           "-----END PGP SIGNATURE-----\n")
    assert [t.value for t in parse_trailers(msg)] == ["CVE-2026-1234"]


def test_mr_labels_variable() -> None:
    claims = mr_label_claims({"CI_MERGE_REQUEST_LABELS": "backend, Security ,ui"}, Policy())
    assert [c.source for c in claims] == [MR_LABEL]
    assert mr_label_claims({"CI_MERGE_REQUEST_LABELS": "backend,ui"}, Policy()) == []
    assert mr_label_claims({}, Policy()) == []


# --- real git repositories ----------------------------------------------------------------


@pytest.fixture
def tagged_repo(make_git_repo: Callable[..., GitRepo]):
    repo = make_git_repo("tags")
    repo.commit("one")
    repo.tag("v1.0.0")  # lightweight
    repo.commit("two")
    repo.tag("v1.2.0", "release 1.2.0")  # annotated, no trailer
    repo.tag("v1.3.0-rc.1")  # prerelease: never a baseline
    repo.tag("not-a-version")
    repo.tag("v1.10.0-beta")
    return repo


@pytest.mark.parametrize("candidate,baseline,cls", [
    ("1.2.1", "1.2.0", "patch"), ("1.3.0", "1.2.0", "feature"), ("2.0.0", "1.2.0", "major"),
    ("1.2.0", "1.0.0", "feature"),  # the candidate's own tag is not its baseline
    ("1.0.0", None, "major"),  # first release
])
def test_baseline_from_git_tags(tagged_repo, candidate: str, baseline: str | None,
                                cls: str) -> None:
    d = decide_release(None, name="greeter", version=candidate, repo=tagged_repo.path, env={},
                       now=NOW)
    assert (d.baseline, d.release_class) == (baseline, cls)
    if baseline:
        assert d.baseline_source == f"git tag v{baseline}"


def test_baseline_from_option_beats_git(tagged_repo) -> None:
    d = decide_release(None, name="greeter", version="1.2.1", baseline="1.2.1",
                       repo=tagged_repo.path, env={}, now=NOW)
    assert d.release_class == "no-change" and d.baseline_source == "--from"


def test_malformed_versions_refused_with_twin(tagged_repo) -> None:
    for bad in ("1.2", "v1.2.1", "01.2.1"):
        with pytest.raises(VersionError):
            decide_release(None, name="greeter", version=bad, repo=tagged_repo.path, env={},
                           now=NOW)
        with pytest.raises(VersionError):
            decide_release(None, name="greeter", version="1.2.1", baseline=bad,
                           repo=tagged_repo.path, env={}, now=NOW)
    assert decide_release(None, name="greeter", version="1.2.1", baseline="1.2.0",
                          repo=tagged_repo.path, env={}, now=NOW).release_class == "patch"


def test_no_git_repository(tmp_path) -> None:
    d = decide_release(None, name="greeter", version="1.0.0", repo=tmp_path, env={}, now=NOW)
    assert d.baseline is None and d.baseline_source == "no git repository"


def test_annotated_tag_trailer_is_reported_not_obeyed(tagged_repo) -> None:
    tagged_repo.commit("three")
    tagged_repo.tag("v1.2.1", "release 1.2.1\n\nSecurity-Advisory: CVE-2026-1234")
    facts = read_git(tagged_repo.path, V("1.2.1"))
    assert [(c.source, c.advisory, c.where) for c in facts.claims] == [
        (TAG_TRAILER, "CVE-2026-1234", "tag v1.2.1")]
    d = decide_release(None, name="greeter", version="1.2.1", repo=tagged_repo.path, env={},
                       now=NOW)
    assert d.release_class == "patch"
    assert "security claimed by tag trailer, not signed: scheduled" in \
        [r.message for r in d.reasons]


def test_commit_trailer_under_lightweight_tag(tagged_repo) -> None:
    tagged_repo.commit("fix auth bypass\n\nSecurity-Advisory: CVE-2026-4321\nSigned-off-by: T")
    tagged_repo.tag("v1.2.1")
    facts = read_git(tagged_repo.path, V("1.2.1"))
    assert [(c.source, c.advisory) for c in facts.claims] == [(COMMIT_TRAILER, "CVE-2026-4321")]
    d = decide_release(None, name="greeter", version="1.2.1", repo=tagged_repo.path, env={},
                       now=NOW)
    assert "security claimed by commit trailer, not signed: scheduled" in \
        [r.message for r in d.reasons]


def test_commit_trailer_obeyed_when_policy_lists_it(tagged_repo) -> None:
    from types import SimpleNamespace

    from hotrelease.gate.schedule import Schedule

    tagged_repo.commit("fix\n\nSecurity-Advisory: CVE-2026-4321")
    tagged_repo.tag("v1.2.1")
    cfg = SimpleNamespace(policy=Policy(security_sources=(SIGNED_LABEL, COMMIT_TRAILER)),
                          schedule=Schedule(), plugin=SimpleNamespace(name="greeter"))
    d = decide_release(cfg, version="1.2.1", repo=tagged_repo.path, env={}, now=NOW,
                       stages={"urgent": ["all-at-once"], "scheduled": ["canary", "waves"]})
    assert (d.release_class, d.lane, d.stages) == ("security", "urgent", ["all-at-once"])


def test_trailers_read_from_head_when_candidate_untagged(tagged_repo) -> None:
    tagged_repo.commit("fix\n\nSecurity-Advisory: CVE-2026-9999")
    facts = read_git(tagged_repo.path, V("1.2.1"))
    assert [(c.where, c.advisory) for c in facts.claims] == [("commit HEAD", "CVE-2026-9999")]


def test_mr_label_reported_not_obeyed(tagged_repo) -> None:
    d = decide_release(None, name="greeter", version="1.2.1", repo=tagged_repo.path,
                       env={"CI_MERGE_REQUEST_LABELS": "security"}, now=NOW)
    assert d.release_class == "patch"
    assert "security claimed by merge-request label, not signed: scheduled" in \
        [r.message for r in d.reasons]


def test_downgrade_against_from(tagged_repo) -> None:
    d = decide_release(None, name="greeter", version="1.1.0", baseline="1.2.0",
                       repo=tagged_repo.path, env={}, now=NOW)
    assert d.release_class == "downgrade" and d.refused
    ok = decide_release(None, name="greeter", version="1.1.0", baseline="1.2.0",
                        repo=tagged_repo.path, env={}, now=NOW, rollback=True)
    assert ok.refused is None and ok.lane == "scheduled" and ok.needs_approval


def test_stages_per_lane(tagged_repo) -> None:
    """Publish passes stage names per lane; the decision uses the lane it chose."""
    stages = {"urgent": ["canary-fast", "all"], "scheduled": ["canary", "wave-1", "wave-2"]}
    major = decide_release(None, name="greeter", version="2.0.0", repo=tagged_repo.path,
                           env={}, now=NOW, stages=stages)
    assert major.stages == ["canary", "wave-1", "wave-2"]
    assert major.approval_stages == ["wave-1", "wave-2"]
    same = decide_release(None, name="greeter", version="1.2.0", baseline="1.2.0",
                          repo=tagged_repo.path, env={}, now=NOW, stages=stages)
    assert same.lane == "none" and same.stages == ["canary", "wave-1", "wave-2"]
    flat = decide_release(None, name="greeter", version="2.0.0", repo=tagged_repo.path,
                          env={}, now=NOW, stages=["a", "b"])
    assert flat.stages == ["a", "b"] and flat.approval_stages == ["b"]
    assert flat.plan_digest != major.plan_digest  # stages are a deciding input


def test_rollout_config_gates_stages_and_changes_the_digest(tagged_repo, tmp_path) -> None:
    """Stages come from the project's [rollout] config; its approval flags are part of the
    decision (and so of the plan digest), on top of the class rule."""
    from hotrelease.config.inventory import lane_stages
    from hotrelease.config.project import ProjectConfig, parse_config

    def config(approval: str) -> ProjectConfig:
        data = {"plugin": {"name": "greeter"}, "build": {"commands": ["true"]},
                "rollout": {"scheduled": [
                    {"name": "canary", "nodes": 1},
                    {"name": "all", "percent": 100, "approval": approval == "on"}]}}
        return parse_config(data, tmp_path / "hotrelease.toml")

    on, off = config("on"), config("off")
    gated = decide_release(on, name="greeter", version="1.3.0",
                           repo=tagged_repo.path, env={}, now=NOW,
                           stages=lane_stages(on.inventory))
    assert gated.release_class == "feature"
    assert gated.stages == ["canary", "all"] and gated.approval_stages == ["all"]
    open_ = decide_release(off, name="greeter", version="1.3.0",
                           repo=tagged_repo.path, env={}, now=NOW,
                           stages=lane_stages(off.inventory))
    assert open_.approval_stages == []
    assert open_.plan_digest != gated.plan_digest
