"""Baselines from tags: the highest SemVer release tag below a candidate, fast on
repositories with thousands of tags.

Pure; imports `trust.versions` only. `gate.inputs` reads the tags (through `build.git`) and
asks here for the baseline.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import semver

from hotrelease.trust.versions import is_prerelease, version_from_tag

# Only the numeric core of a tag, as a cheap pre-filter; full validation is semver's job.
_TAG_CORE_RE = re.compile(r"^[vV]?(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(?:[-+]|$)")


def release_versions(tags: Iterable[str], *, include_prereleases: bool = False
                     ) -> list[tuple[semver.Version, str]]:
    """Tags that are SemVer releases (`v1.2.3` or `1.2.3`), with the tag each came from.

    A cheap first-character check skips non-version tags before the `semver` parser runs,
    because repositories with thousands of tags make parsing the hot path of `classify`.
    """
    out = []
    for tag in tags:
        first = tag[1:2] if tag[:1] in ("v", "V") else tag[:1]
        if not first.isdigit():
            continue
        version = version_from_tag(tag)
        if version is None or (is_prerelease(version) and not include_prereleases):
            continue
        out.append((version, tag))
    return out


def highest_below(candidate: semver.Version, versions: Iterable[tuple[semver.Version, str]]
                  ) -> tuple[semver.Version, str] | None:
    """The highest version strictly below `candidate` in SemVer precedence, or None.

    Integer (major, minor, patch) tuples narrow the field first (cores compare numerically,
    which is exactly SemVer's first rule); only versions sharing the best core are then
    ordered with the `semver` library, which knows prerelease precedence.
    """
    core = (candidate.major, candidate.minor, candidate.patch)
    best_core: tuple[int, int, int] | None = None
    group: list[tuple[semver.Version, str]] = []
    for version, tag in versions:
        vcore = (version.major, version.minor, version.patch)
        if vcore > core or (best_core is not None and vcore < best_core):
            continue
        if vcore == core and version.compare(candidate) >= 0:
            continue
        if best_core is None or vcore > best_core:
            best_core, group = vcore, []
        group.append((version, tag))
    if not group:
        return None
    # Among equal precedence (e.g. v1.2.0 and 1.2.0+build), prefer the shortest tag name so
    # the choice is deterministic.
    return max(group, key=lambda item: (item[0], -len(item[1]), item[1]))


def highest_tag_below(candidate: semver.Version, tags: Iterable[str], *,
                      include_prereleases: bool = False) -> tuple[semver.Version, str] | None:
    """`highest_below(candidate, release_versions(tags))`, without parsing every tag.

    The hot path of `classify` on repositories with thousands of tags: a regex reads each
    tag's numeric core; cores are visited from the highest one not above the candidate's
    downwards, and only the tags of the first core that yields a valid release are parsed
    (strictly, by `semver`) and ordered with SemVer precedence.
    """
    core = (candidate.major, candidate.minor, candidate.patch)
    by_core: dict[tuple[int, int, int], list[str]] = {}
    for tag in tags:
        match = _TAG_CORE_RE.match(tag)
        if match is not None:
            tcore = (int(match.group(1)), int(match.group(2)), int(match.group(3)))
            if tcore <= core:
                by_core.setdefault(tcore, []).append(tag)
    for tcore in sorted(by_core, reverse=True):
        group = release_versions(by_core[tcore], include_prereleases=include_prereleases)
        best = highest_below(candidate, group)
        if best is not None:
            return best
    return None
