"""keygen, build, sign, verify, config check: the foundation commands CI jobs call."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from hotrelease.commands._common import (
    CONFIG_OPTION,
    JSON_OPTION,
    NOW_OPTION,
    emit_json,
    existing_file,
    info,
    parse_now,
    read_passphrase,
)
from hotrelease.errors import UsageError

PASSPHRASE_ENV_OPTION = typer.Option(
    None, "--passphrase-env", metavar="VAR",
    help="Read the key's passphrase from this environment variable.")


def keygen(
    out: Path = typer.Option(..., "--out", metavar="PREFIX",
                             help="Writes PREFIX.key (0600) and PREFIX.pub."),
    passphrase_env: str | None = PASSPHRASE_ENV_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Generate an Ed25519 key pair for signing releases, labels or approvals."""
    from hotrelease.trust.keys import generate_keypair

    public = generate_keypair(out, read_passphrase(passphrase_env))
    if json_out:
        emit_json({"keyid": public.keyid, "private_key": f"{out}.key",
                   "public_key": f"{out}.pub"})
    else:
        typer.echo(f"wrote {out}.key (private, mode 0600) and {out}.pub")
        typer.echo(f"key id: {public.keyid}")


def build(
    config: Path | None = CONFIG_OPTION,
    version: str | None = typer.Option(
        None, "--version", help="SemVer to build (default: the SemVer tag at HEAD)."),
    out: Path | None = typer.Option(None, "--out", help="Output dir (default: build.output_dir)."),
    allow_dirty: bool = typer.Option(False, "--allow-dirty",
                                     help="Build even if the work tree has changes."),
    now: str | None = NOW_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Run the plugin build, then write bundle, manifest and SHA256SUMS."""
    from hotrelease.build.artifact import build_release
    from hotrelease.config.project import load_config

    cfg = load_config(config)
    result = build_release(cfg, version=version, out_dir=out, allow_dirty=allow_dirty,
                           now=parse_now(now), log=info)
    m = result.manifest
    if json_out:
        emit_json({"name": m.name, "version": m.version, "bundle": str(result.bundle_path),
                   "manifest": str(result.manifest_path), "sha256sums": str(result.sums_path),
                   "sha256": m.bundle.sha256, "size": m.bundle.size,
                   "files": len(m.files), "expires": m.to_dict()["expires"]})
    else:
        typer.echo(f"built {m.release_id}: {result.bundle_path} ({m.bundle.size} bytes, "
                   f"{len(m.files)} files)")
        typer.echo(f"manifest: {result.manifest_path}")
        typer.echo(f"sha256:   {m.bundle.sha256}")


def sign(
    manifest: Path = typer.Argument(..., metavar="MANIFEST",
                                     help="The manifest to sign (*.manifest.json)."),
    key: Path | None = typer.Option(None, "--key", help="Private key file (PEM)."),
    key_env: str | None = typer.Option(
        None, "--key-env", metavar="VAR",
        help="Read the private key (PEM, or base64 of it) from this environment variable "
             "instead of a file; default HOTRELEASE_SIGNING_KEY when --key is not given."),
    passphrase_env: str | None = PASSPHRASE_ENV_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Add a signature to MANIFEST.sig (run again with another key for k-of-n)."""
    from hotrelease.trust.keys import load_private_key
    from hotrelease.trust.manifest import sign_manifest

    existing_file(manifest, "manifest")
    if key is None and key_env is None:
        key_env = "HOTRELEASE_SIGNING_KEY"
        if not os.environ.get(key_env):
            raise UsageError("give --key FILE, --key-env VAR, or set HOTRELEASE_SIGNING_KEY")
    private = load_private_key(key, env=None if key else key_env,
                               passphrase=read_passphrase(passphrase_env))
    sig_path, envelope, keyid = sign_manifest(manifest, private)
    if json_out:
        emit_json({"signature": str(sig_path), "keyid": keyid,
                   "signatures": len(envelope.signatures)})
    else:
        typer.echo(f"signed {manifest.name} with key {keyid[:12]}; {sig_path} now holds "
                   f"{len(envelope.signatures)} signature(s)")


def verify(
    manifest: Path = typer.Argument(..., metavar="MANIFEST",
                                     help="The manifest; MANIFEST.sig and the bundle "
                                          "are expected beside it."),
    trusted: list[Path] = typer.Option(..., "--trusted", help="Trusted public key (repeat)."),
    threshold: int = typer.Option(1, "--threshold", min=1,
                                  help="Distinct trusted signatures required."),
    bundle: Path | None = typer.Option(None, "--bundle", help="Bundle path if not beside."),
    now: str | None = NOW_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Check signatures, threshold, expiry, and every digest and size of the bundle."""
    from hotrelease.trust.keys import load_trusted
    from hotrelease.trust.verify import verify_release

    keys = load_trusted(trusted)
    if threshold > len(keys):
        raise UsageError(f"--threshold {threshold} but only {len(keys)} distinct trusted key(s)")
    m = verify_release(manifest, trusted=keys, threshold=threshold, now=parse_now(now),
                       bundle_path=bundle)
    if json_out:
        emit_json({"verified": True, "name": m.name, "version": m.version,
                   "sha256": m.bundle.sha256, "expires": m.to_dict()["expires"]})
    else:
        typer.echo(f"OK {m.release_id}: signatures, digests and sizes verified; expires "
                   f"{m.to_dict()['expires']}")


config_app = typer.Typer(help="Work with hotrelease.toml.", no_args_is_help=True,
                         rich_markup_mode=None)


@config_app.command("check")
def config_check(
    config: Path | None = typer.Argument(None, metavar="[FILE]",
                                         help="Config file (default: find it)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Validate a config file: unknown keys, types, required keys; warn about settings that
    are valid but probably not meant."""
    from hotrelease.config.project import config_warnings, load_config

    cfg = load_config(config)
    warnings = config_warnings(cfg)
    if json_out:
        emit_json({"config": str(cfg.path), "plugin": cfg.plugin.name, "warnings": warnings})
    else:
        typer.echo(f"{cfg.path}: OK (plugin {cfg.plugin.name}, kind {cfg.plugin.kind})")
    for warning in warnings:
        info(f"warning: {warning}")


def register(app: typer.Typer) -> None:
    app.command()(keygen)
    app.command()(build)
    app.command()(sign)
    app.command()(verify)
    app.add_typer(config_app, name="config")


def demo(
    nodes: int = typer.Option(3, "--nodes", min=1, max=20, help="Local agents to start."),
) -> None:
    """Run the whole product locally: agents, build, sign, classify, publish (temp dir)."""
    from hotrelease.ci.demo import run_demo
    from hotrelease.commands.render import publish_lines, status_lines

    run_demo(typer.echo, nodes, publish_lines=publish_lines, status_lines=status_lines,
             notice=info)


def register_demo(app: typer.Typer) -> None:
    app.command()(demo)
