"""`hotrelease demo`: the whole flow on the embedded example plugin, in a temp dir.

Grows with the product: today build -> sign -> verify (and a tampered copy refused).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from hotrelease.artifact import build_release
from hotrelease.config import load_config
from hotrelease.errors import VerificationError
from hotrelease.manifest import parse_manifest_bytes
from hotrelease.signing import MANIFEST_TYPE, Envelope, generate_keypair, load_private_key
from hotrelease.verify import signature_path_for, verify_release


def example_dir(name: str = "python-plugin") -> Path:
    root = resources.files("hotrelease.examples") / name
    return Path(str(root))


def copy_example(target: Path, name: str = "python-plugin") -> Path:
    shutil.copytree(example_dir(name), target,
                    ignore=shutil.ignore_patterns("dist", "__pycache__", "*.pyc"))
    return target


def sign_manifest(manifest_path: Path, key_path: Path) -> None:
    _, canonical = parse_manifest_bytes(manifest_path.read_bytes(), str(manifest_path))
    sig_path = signature_path_for(manifest_path)
    envelope = Envelope.load(sig_path) if sig_path.exists() else Envelope(MANIFEST_TYPE)
    envelope.add_signature(canonical, load_private_key(key_path))
    envelope.save(sig_path)


def run_demo(say: Callable[[str], None], workdir: Path | None = None) -> None:
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="hotrelease-demo-") as tmp:
        base = Path(workdir or tmp)
        say(f"demo workspace: {base}")
        plugin = copy_example(base / "greeter")
        public = generate_keypair(base / "release")
        say(f"1. keygen: throwaway release key {public.keyid[:12]}")
        cfg = load_config(plugin / "hotrelease.toml")
        result = build_release(cfg, version="1.0.0", out_dir=None, allow_dirty=True, now=now,
                               env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
        say(f"2. build: {result.bundle_path.name} sha256 {result.manifest.bundle.sha256[:16]}… "
            f"({len(result.manifest.files)} files)")
        sign_manifest(result.manifest_path, base / "release.key")
        say(f"3. sign: {signature_path_for(result.manifest_path).name}")
        trusted = {public.keyid: public}
        verify_release(result.manifest_path, trusted=trusted, threshold=1, now=now)
        say("4. verify: signatures, digests, sizes and expiry OK")
        tampered = base / "tampered"
        shutil.copytree(result.manifest_path.parent, tampered)
        bundle = tampered / result.bundle_path.name
        data = bytearray(bundle.read_bytes())
        data[len(data) // 2] ^= 0xFF
        bundle.write_bytes(bytes(data))
        try:
            verify_release(tampered / result.manifest_path.name, trusted=trusted, threshold=1,
                           now=now)
        except VerificationError as exc:
            say(f"5. tampered copy refused: {exc}")
        else:  # pragma: no cover - would be a verification bug
            raise AssertionError("tampered bundle verified")
