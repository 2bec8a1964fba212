"""SemVer 2.0.0 parsing (through the `semver` library; never string comparison).

The trust core's: a manifest, an approval and the agent accept a version only through
`parse_version`. Which tag is the baseline of a release is the gate's (`gate.versioning`).
"""

from __future__ import annotations

import semver

from hotrelease.errors import VersionError

# A version becomes a directory name on every node (releases/<name>/<version>) and part of
# file names (<name>-<version>.tar.gz, .manifest.json.sig): bounded well below NAME_MAX (255).
MAX_VERSION_LENGTH = 128


def parse_version(text: str) -> semver.Version:
    """Strict SemVer: no `v` prefix, no leading zeros, three numeric parts, at most
    MAX_VERSION_LENGTH characters. The one version check of the CLI and the agent."""
    if not isinstance(text, str):
        raise VersionError(f"version must be a string, got {type(text).__name__}")
    if len(text) > MAX_VERSION_LENGTH:
        raise VersionError(f"version {text[:24]!r}... is longer than {MAX_VERSION_LENGTH} "
                           f"characters ({len(text)})")
    try:
        return semver.Version.parse(text)
    except (ValueError, TypeError):
        raise VersionError(
            f"{text!r} is not a valid SemVer 2.0.0 version (expected MAJOR.MINOR.PATCH, "
            "e.g. 1.4.2 or 2.0.0-rc.1, without a 'v' and without leading zeros)") from None


def version_from_tag(tag: str) -> semver.Version | None:
    """`v1.2.3` or `1.2.3` -> Version; anything else -> None (not a release tag)."""
    text = tag[1:] if tag[:1] in ("v", "V") else tag
    if len(text) > MAX_VERSION_LENGTH:
        return None  # could never have been released
    try:
        return semver.Version.parse(text)
    except (ValueError, TypeError):
        return None


def is_prerelease(version: semver.Version) -> bool:
    return version.prerelease is not None


def same_precedence(a: semver.Version, b: semver.Version) -> bool:
    """Equal under SemVer precedence: build metadata (`+...`) is ignored, as the spec says."""
    return a.compare(b) == 0
