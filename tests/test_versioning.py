"""SemVer parsing, tag filtering, baseline selection and bump kinds vs the semver library."""

from __future__ import annotations

import pytest
import semver
from hypothesis import given, settings
from hypothesis import strategies as st

from hotrelease.errors import VersionError
from hotrelease.gate.classify import (
    DOWNGRADE,
    INITIAL,
    MAJOR,
    MINOR,
    NONE,
    PATCH,
    PRERELEASE,
    compute_bump,
)
from hotrelease.gate.versioning import highest_below, highest_tag_below, release_versions
from hotrelease.trust.versions import parse_version, same_precedence, version_from_tag

V = semver.Version.parse


@pytest.mark.parametrize("bad,good", [
    ("1.2", "1.2.0"), ("01.2.3", "1.2.3"), ("1.02.3", "1.2.3"), ("v1.2.3", "1.2.3"),
    ("1.2.3-01", "1.2.3-1"), ("1.2.3-", "1.2.3-rc"), ("1.2.3.4", "1.2.3"), ("", "0.0.1"),
    (" 1.2.3", "1.2.3"),
])
def test_malformed_version_refused_with_passing_twin(bad: str, good: str) -> None:
    with pytest.raises(VersionError, match="not a valid SemVer"):
        parse_version(bad)
    assert str(parse_version(good)) == good


def test_version_from_tag_accepts_v_prefix_only() -> None:
    assert version_from_tag("v1.2.3") == V("1.2.3")
    assert version_from_tag("1.2.3") == V("1.2.3")
    assert version_from_tag("release-1.2.3") is None
    assert version_from_tag("v01.2.3") is None


def test_release_versions_skips_junk_and_prereleases() -> None:
    tags = ["v1.0.0", "latest", "v1.1.0-rc.1", "2.0.0", "v3", "vX", "v1.0.0+build.5", ""]
    assert [t for _, t in release_versions(tags)] == ["v1.0.0", "2.0.0", "v1.0.0+build.5"]
    assert "v1.1.0-rc.1" in [t for _, t in release_versions(tags, include_prereleases=True)]


def test_highest_below_ignores_candidate_and_higher() -> None:
    tags = release_versions(["v1.0.0", "v1.2.0", "v1.2.1", "v2.0.0", "v1.10.0"])
    assert highest_below(V("1.2.1"), tags) == (V("1.2.0"), "v1.2.0")
    assert highest_below(V("1.11.0"), tags) == (V("1.10.0"), "v1.10.0")  # numeric, not text
    assert highest_below(V("2.0.0-rc.1"), tags) == (V("1.10.0"), "v1.10.0")
    assert highest_below(V("1.0.0"), tags) is None


def test_same_precedence_ignores_build_metadata() -> None:
    assert same_precedence(V("1.2.3+a"), V("1.2.3+b"))
    assert not same_precedence(V("1.2.3-rc.1"), V("1.2.3"))


@pytest.mark.parametrize("base,cand,bump", [
    (None, "1.0.0", INITIAL),
    ("1.2.3", "1.2.3", NONE), ("1.2.3+a", "1.2.3+b", NONE),
    ("1.2.3", "1.2.2", DOWNGRADE), ("1.2.3", "1.2.3-rc.1", DOWNGRADE),
    ("1.2.3", "2.0.0", MAJOR), ("1.2.3", "1.3.0", MINOR), ("1.2.3", "1.2.4", PATCH),
    ("1.3.0-rc.1", "1.3.0", PRERELEASE), ("1.3.0-alpha", "1.3.0-beta", PRERELEASE),
    ("1.2.3", "1.3.0-rc.1", MINOR),
    ("0.3.1", "0.4.0", MAJOR), ("0.3.1", "0.3.2", PATCH), ("0.9.0", "1.0.0", MAJOR),
])
def test_bump_table(base: str | None, cand: str, bump: str) -> None:
    assert compute_bump(V(base) if base else None, V(cand))[0] == bump


def test_zero_minor_rule_is_a_knob() -> None:
    assert compute_bump(V("0.3.1"), V("0.4.0"), zero_minor_is_major=False)[0] == MINOR
    kind, why = compute_bump(V("0.3.1"), V("0.4.0"))
    assert kind == MAJOR and "zero_minor_is_major" in why


# --- properties against the semver library -------------------------------------------------

numbers = st.integers(0, 3) | st.integers(0, 10**6)
ident_num = st.integers(0, 20).map(str)
ident_alpha = st.text("abcxyz-", min_size=1, max_size=4).filter(lambda s: not s.isdigit())
prerelease = st.lists(ident_num | ident_alpha, min_size=1, max_size=3).map(".".join)
build = st.lists(st.text("abc019", min_size=1, max_size=3), min_size=1, max_size=2).map(".".join)


@st.composite
def semver_strings(draw: st.DrawFn) -> str:
    text = f"{draw(numbers)}.{draw(numbers)}.{draw(numbers)}"
    if draw(st.booleans()):
        text += f"-{draw(prerelease)}"
    if draw(st.booleans()):
        text += f"+{draw(build)}"
    return text


@settings(max_examples=300, deadline=None)
@given(semver_strings(), semver_strings())
def test_bump_agrees_with_semver_precedence(a: str, b: str) -> None:
    base, cand = parse_version(a), parse_version(b)
    bump, _ = compute_bump(base, cand)
    order = semver.Version.parse(b).compare(a)
    if order == 0:
        assert bump == NONE
    elif order < 0:
        assert bump == DOWNGRADE
    else:
        assert bump in (MAJOR, MINOR, PATCH, PRERELEASE)
        assert (bump == MAJOR) == (cand.major != base.major or (
            cand.major == 0 and cand.minor != base.minor))


@settings(max_examples=150, deadline=None)
@given(st.lists(semver_strings(), max_size=12), semver_strings())
def test_highest_below_is_the_semver_max_below(tags: list[str], cand: str) -> None:
    candidate = parse_version(cand)
    pairs = release_versions([f"v{t}" for t in tags])
    got = highest_below(candidate, pairs)
    below = [v for v, _ in pairs if v.compare(candidate) < 0]
    if not below:
        assert got is None
    else:
        assert got is not None and got[0].compare(max(below)) == 0


@settings(max_examples=150, deadline=None)
@given(st.lists(semver_strings(), max_size=12), semver_strings(), st.booleans())
def test_fast_tag_scan_matches_full_parse(tags: list[str], cand: str, pre: bool) -> None:
    names = [f"v{t}" for t in tags] + ["junk", "v1.2", "v01.2.3"]
    candidate = parse_version(cand)
    fast = highest_tag_below(candidate, names, include_prereleases=pre)
    slow = highest_below(candidate, release_versions(names, include_prereleases=pre))
    assert fast == slow
