"""The release manifest: what a signature vouches for.

A manifest binds a plugin name and version to its bundle (digest and size), every file inside
it, the ABI facts a host must match, labels, provenance and an expiry. It is strict: unknown
or mistyped fields are refused, because a field a verifier ignores is a field an attacker
controls.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hotrelease.errors import ExpiredError, ManifestFormatError, VersionError
from hotrelease.trust.canonical import JSONInputError, canonical_bytes, pretty_bytes, strict_loads
from hotrelease.trust.keys import MANIFEST_TYPE, Envelope
from hotrelease.trust.times import format_time, parse_iso
from hotrelease.trust.versions import parse_version

MANIFEST_FORMAT = "hotrelease/manifest/v1"
PLUGIN_KINDS = ("python", "go", "generic")
# Plugin names become directory names on every node and parts of file names; the one name
# check of the CLI (config, manifests, labels, approvals) and the agent (URL paths, slots).
MAX_NAME_LENGTH = 63
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def check_name(name: Any) -> str:
    """Plugin names become directory names on every node: keep them boring."""
    if isinstance(name, str) and len(name) > MAX_NAME_LENGTH:
        raise ManifestFormatError(f"plugin name {name[:24]!r}... is longer than "
                                  f"{MAX_NAME_LENGTH} characters ({len(name)})")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):  # fullmatch: no "x\n"
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:80] + "..."
        raise ManifestFormatError(
            f"plugin name {shown} is invalid: use 1-{MAX_NAME_LENGTH} lowercase letters, "
            "digits, '-' or '_', starting with a letter or digit")
    return name


def check_version(version: Any) -> str:
    try:
        parse_version(version)
    except VersionError as exc:
        raise ManifestFormatError(str(exc)) from None
    return str(version)


def member_path_problem(path: Any) -> str | None:
    """What is wrong with a bundle member path, or None: the one rule for the paths a
    manifest lists and the members an archive holds (relative, normalised, no `..`, `.` or
    empty part, no NUL or backslash). A directory's trailing '/' is the caller's to strip."""
    if not isinstance(path, str) or not path:
        return "empty or not a string"
    if "\x00" in path or "\\" in path:
        return "NUL or backslash in name"
    if path.startswith("/"):
        return "absolute path"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "'..', '.' or empty path part"
    return None


def check_member_path(path: Any) -> str:
    """A file path listed in a manifest (see `member_path_problem`)."""
    problem = member_path_problem(path)
    if problem is not None:
        raise ManifestFormatError(f"file path {path!r} is invalid: {problem}")
    return str(path)


def parse_time(text: Any, what: str = "time") -> datetime:
    if not isinstance(text, str):
        raise ManifestFormatError(f"{what} must be an ISO 8601 string")
    try:
        return parse_iso(text)
    except ValueError as exc:
        raise ManifestFormatError(f"{what} {exc}") from None


def _expect(data: dict[str, Any], where: str, required: dict[str, type],
            optional: dict[str, type] | None = None) -> None:
    optional = optional or {}
    if not isinstance(data, dict):
        raise ManifestFormatError(f"{where}: expected an object")
    missing = sorted(set(required) - set(data))
    if missing:
        raise ManifestFormatError(f"{where}: missing field {missing[0]!r}")
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise ManifestFormatError(f"{where}: unknown field {unknown[0]!r}")
    for key, typ in {**required, **optional}.items():
        if key in data:
            value = data[key]
            if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
                raise ManifestFormatError(f"{where}.{key}: expected {typ.__name__}")


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> FileEntry:
        _expect(data, where, {"path": str, "sha256": str, "size": int})
        if not _SHA256_RE.match(data["sha256"]):
            raise ManifestFormatError(f"{where}.sha256: expected 64 lowercase hex digits")
        if data["size"] < 0:
            raise ManifestFormatError(f"{where}.size: must not be negative")
        return cls(check_member_path(data["path"]), data["sha256"], data["size"])


@dataclass(frozen=True)
class BundleRef:
    filename: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"filename": self.filename, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, data: Any) -> BundleRef:
        _expect(data, "bundle", {"filename": str, "sha256": str, "size": int})
        entry = FileEntry.from_dict({"path": data["filename"], "sha256": data["sha256"],
                                     "size": data["size"]}, "bundle")
        if "/" in entry.path:
            raise ManifestFormatError("bundle.filename: must be a plain file name")
        return cls(entry.path, entry.sha256, entry.size)


@dataclass(frozen=True)
class Dependency:
    name: str
    range: str  # e.g. ">=1.2.0,<2.0.0"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "range": self.range}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Dependency:
        _expect(data, where, {"name": str, "range": str})
        return cls(check_name(data["name"]), data["range"])


@dataclass
class ReleaseManifest:
    name: str
    version: str
    kind: str
    bundle: BundleRef
    files: list[FileEntry]
    expires: datetime
    provenance: dict[str, Any] = field(default_factory=dict)
    abi: dict[str, Any] = field(default_factory=dict)
    entry_symbols: list[str] = field(default_factory=list)
    dependencies: list[Dependency] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def release_id(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "bundle": self.bundle.to_dict(),
            "files": [f.to_dict() for f in self.files],
            "expires": format_time(self.expires),
            "provenance": self.provenance,
            "abi": self.abi,
            "entry_symbols": list(self.entry_symbols),
            "dependencies": [d.to_dict() for d in self.dependencies],
            "labels": dict(self.labels),
        }

    @classmethod
    def from_dict(cls, data: Any) -> ReleaseManifest:
        _expect(data, "manifest",
                {"format": str, "name": str, "version": str, "kind": str, "bundle": dict,
                 "files": list, "expires": str},
                {"provenance": dict, "abi": dict, "entry_symbols": list, "dependencies": list,
                 "labels": dict})
        if data["format"] != MANIFEST_FORMAT:
            raise ManifestFormatError(f"manifest.format: expected {MANIFEST_FORMAT!r}")
        if data["kind"] not in PLUGIN_KINDS:
            raise ManifestFormatError(f"manifest.kind: expected one of {', '.join(PLUGIN_KINDS)}")
        files = [FileEntry.from_dict(f, f"files[{i}]") for i, f in enumerate(data["files"])]
        paths = [f.path for f in files]
        if len(set(paths)) != len(paths):
            raise ManifestFormatError("files: duplicate path")
        symbols = data.get("entry_symbols", [])
        if not all(isinstance(s, str) for s in symbols):
            raise ManifestFormatError("entry_symbols: expected a list of strings")
        labels = data.get("labels", {})
        if not all(isinstance(v, str) for v in labels.values()):
            raise ManifestFormatError("labels: expected string values")
        return cls(
            name=check_name(data["name"]),
            version=check_version(data["version"]),
            kind=data["kind"],
            bundle=BundleRef.from_dict(data["bundle"]),
            files=files,
            expires=parse_time(data["expires"], "manifest.expires"),
            provenance=dict(data.get("provenance", {})),
            abi=dict(data.get("abi", {})),
            entry_symbols=list(symbols),
            dependencies=[Dependency.from_dict(d, f"dependencies[{i}]")
                          for i, d in enumerate(data.get("dependencies", []))],
            labels=dict(labels),
        )

    def canonical_bytes(self) -> bytes:
        return canonical_bytes(self.to_dict())

    def save(self, path: Path) -> None:
        Path(path).write_bytes(pretty_bytes(self.to_dict()))

    def check_not_expired(self, now: datetime) -> None:
        if now >= self.expires:
            raise ExpiredError(f"manifest for {self.release_id} expired at "
                               f"{format_time(self.expires)}")


def parse_manifest_bytes(data: bytes, source: str = "manifest") -> tuple[dict[str, Any], bytes]:
    """Parse a manifest file: returns (raw dict, canonical bytes that signatures cover)."""
    try:
        raw = strict_loads(data)
    except JSONInputError as exc:
        raise ManifestFormatError(f"{source}: {exc}") from None
    try:
        return raw, canonical_bytes(raw)
    except ValueError as exc:
        raise ManifestFormatError(f"{source}: {exc}") from None


def load_manifest(path: Path) -> ReleaseManifest:
    """Parse without checking signatures (for display and for the signer)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ManifestFormatError(f"{path}: manifest not found") from None
    raw, _ = parse_manifest_bytes(data, str(path))
    return ReleaseManifest.from_dict(raw)


# --- the manifest's detached signature file -------------------------------------------


def signature_path_for(manifest_path: Path) -> Path:
    return Path(f"{manifest_path}.sig")


def sign_manifest(manifest_path: Path, private: Any) -> tuple[Path, Envelope, str]:
    """Add (or replace) this key's signature in MANIFEST.sig, after checking that the file
    is a valid manifest. Returns (signature path, envelope, key id)."""
    try:
        data = manifest_path.read_bytes()
    except FileNotFoundError:
        raise ManifestFormatError(f"{manifest_path}: manifest not found") from None
    raw, canonical = parse_manifest_bytes(data, str(manifest_path))
    ReleaseManifest.from_dict(raw)  # never sign something that is not a manifest
    sig_path = signature_path_for(manifest_path)
    envelope = Envelope.load(sig_path) if sig_path.exists() else Envelope(MANIFEST_TYPE)
    keyid = envelope.add_signature(canonical, private)
    envelope.save(sig_path)
    return sig_path, envelope, keyid
