"""SemVer 2.0.0 parsing (through the `semver` library; never string comparison)."""

from __future__ import annotations

import semver

from hotrelease.errors import VersionError


def parse_version(text: str) -> semver.Version:
    """Strict SemVer: no `v` prefix, no leading zeros, three numeric parts."""
    if not isinstance(text, str):
        raise VersionError(f"version must be a string, got {type(text).__name__}")
    try:
        return semver.Version.parse(text)
    except (ValueError, TypeError):
        raise VersionError(
            f"{text!r} is not a valid SemVer 2.0.0 version (expected MAJOR.MINOR.PATCH, "
            "e.g. 1.4.2 or 2.0.0-rc.1, without a 'v' and without leading zeros)") from None


def version_from_tag(tag: str) -> semver.Version | None:
    """`v1.2.3` or `1.2.3` -> Version; anything else -> None (not a release tag)."""
    text = tag[1:] if tag[:1] in ("v", "V") else tag
    try:
        return semver.Version.parse(text)
    except (ValueError, TypeError):
        return None
