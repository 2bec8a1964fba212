"""Security labels: the security team's signed statement "this release fixes advisory X".

A label is bound to plugin name + version + bundle digest and expires. It travels as a JSON
document plus a detached envelope (`LABEL.sig`), exactly like a manifest, but under its own
payload type, so a release key's signature on a manifest can never pass as a security label
and vice versa. No network or git I/O: the agent imports this too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from hotrelease.errors import ExpiredError, IdentityMismatchError, ManifestFormatError
from hotrelease.trust.canonical import canonical_bytes, pretty_bytes
from hotrelease.trust.keys import SECURITY_LABEL_TYPE, Envelope, PublicKey, verify_signed_json
from hotrelease.trust.manifest import _expect, check_name, check_version, parse_time
from hotrelease.trust.times import format_time

LABEL_FORMAT = "hotrelease/security-label/v1"
SEVERITIES = ("low", "medium", "high", "critical")
_ADVISORY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{2,63}$")  # CVE-2026-1234, GHSA-..., HR-7


@dataclass(frozen=True)
class SecurityLabel:
    name: str
    version: str
    bundle_sha256: str
    advisory: str
    severity: str
    issued_at: datetime
    expires: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"format": LABEL_FORMAT, "name": self.name, "version": self.version,
                "bundle_sha256": self.bundle_sha256, "advisory": self.advisory,
                "severity": self.severity, "issued_at": format_time(self.issued_at),
                "expires": format_time(self.expires)}

    @classmethod
    def from_dict(cls, data: Any) -> SecurityLabel:
        _expect(data, "label", {"format": str, "name": str, "version": str,
                                "bundle_sha256": str, "advisory": str, "severity": str,
                                "issued_at": str, "expires": str})
        if data["format"] != LABEL_FORMAT:
            raise ManifestFormatError(f"label.format: expected {LABEL_FORMAT!r}")
        if data["severity"] not in SEVERITIES:
            raise ManifestFormatError(f"label.severity: expected one of {', '.join(SEVERITIES)}")
        if not _ADVISORY_RE.match(data["advisory"]):
            raise ManifestFormatError(f"label.advisory: {data['advisory']!r} is not an "
                                      "advisory id like CVE-2026-1234")
        if not re.fullmatch(r"[0-9a-f]{64}", data["bundle_sha256"]):
            raise ManifestFormatError("label.bundle_sha256: expected 64 lowercase hex digits")
        return cls(check_name(data["name"]), check_version(data["version"]),
                   data["bundle_sha256"], data["advisory"], data["severity"],
                   parse_time(data["issued_at"], "label.issued_at"),
                   parse_time(data["expires"], "label.expires"))

    def canonical_bytes(self) -> bytes:
        return canonical_bytes(self.to_dict())

    @property
    def label_id(self) -> str:
        return f"{self.name}@{self.version}:{self.advisory}"


def label_path_for(name: str, version: str, directory: Path) -> Path:
    return directory / f"{name}-{version}.security.json"


def save_label(label: SecurityLabel, envelope: Envelope, path: Path) -> None:
    Path(path).write_bytes(pretty_bytes(label.to_dict()))
    envelope.save(Path(f"{path}.sig"))


def verify_label(data: dict[str, Any], envelope: Envelope, *, trusted: dict[str, PublicKey],
                 threshold: int, now: datetime, name: str | None = None,
                 version: str | None = None, bundle_sha256: str | None = None) -> SecurityLabel:
    """Signatures by the security role first, then binding and expiry. Raises on any failure."""
    verify_signed_json(data, envelope, payload_type=SECURITY_LABEL_TYPE, trusted=trusted,
                       threshold=threshold, what="label")
    label = SecurityLabel.from_dict(data)
    if name is not None and label.name != name:
        raise IdentityMismatchError(f"security label is for plugin {label.name!r}, not {name!r}")
    if version is not None and label.version != version:
        raise IdentityMismatchError(f"security label is for version {label.version}, "
                                    f"not {version}")
    if bundle_sha256 is not None and label.bundle_sha256 != bundle_sha256:
        raise IdentityMismatchError("security label is for another bundle digest (rebuilt?)")
    if now >= label.expires:
        raise ExpiredError(f"security label {label.label_id} expired at "
                           f"{format_time(label.expires)}")
    return label


def make_label(*, name: str, version: str, bundle_sha256: str, advisory: str, severity: str,
               now: datetime, expires_days: int) -> SecurityLabel:
    """Build and validate a label (the same checks a verifier runs, so a typo fails here)."""
    from datetime import timedelta

    if expires_days < 1:
        raise ManifestFormatError("label expiry must be at least one day")
    draft = SecurityLabel(name, version, bundle_sha256, advisory, severity, now,
                          now + timedelta(days=expires_days))
    return SecurityLabel.from_dict(draft.to_dict())


def sign_label(label: SecurityLabel, private: Any, envelope: Envelope | None = None
               ) -> tuple[Envelope, str]:
    """Add a security-role signature (k-of-n: pass the existing envelope to add one)."""
    envelope = envelope or Envelope(SECURITY_LABEL_TYPE)
    keyid = envelope.add_signature(label.canonical_bytes(), private)
    return envelope, keyid
