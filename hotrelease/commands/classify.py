"""classify, plan, windows, label security: the version gate's commands.

Thin: parse options, call `gate.decide_release()` (with the config's stages and the fleet
baseline) / the schedule, format. Heavy imports (git, cryptography, requests) happen inside
the functions so `hotrelease --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
from hotrelease.errors import ConfigError, PolicyError, UsageError

MANIFEST_OPTION = typer.Option(None, "--manifest", "-m", metavar="FILE", dir_okay=False,
                               help="Candidate release manifest (*.manifest.json).")
VERSION_OPTION = typer.Option(None, "--version", metavar="V",
                              help="Candidate version (instead of --manifest).")
NAME_OPTION = typer.Option(None, "--name", metavar="N",
                           help="Plugin name (default: the manifest's or [plugin] name).")
FROM_OPTION = typer.Option(None, "--from", metavar="V",
                           help="Baseline: the version running now (default: highest SemVer "
                                "tag below the candidate in git).")
REPO_OPTION = typer.Option(None, "--repo", metavar="DIR", file_okay=False,
                           help="Git repository for tags and trailers (default: here).")
LABEL_OPTION = typer.Option(None, "--label", metavar="FILE", dir_okay=False,
                            help="Security label (LABEL.sig beside it); repeatable. Default: "
                                 "NAME-VERSION.security.json beside the manifest.")
DIGEST_OPTION = typer.Option(None, "--bundle-sha256", metavar="HEX",
                             help="Bundle digest a label must be bound to (without --manifest).")
ROLLBACK_OPTION = typer.Option(False, "--rollback",
                               help="Allow a lower version on purpose (explicit rollback).")
DOTENV_OPTION = typer.Option(None, "--dotenv", metavar="FILE", dir_okay=False,
                             help="Write HOTRELEASE_CLASS, _LANE, _NOT_BEFORE, _PLAN_DIGEST "
                                  "for GitLab artifacts:reports:dotenv.")


def _optional_config(explicit: Path | None) -> Any | None:
    """The project config if there is one; classify works without (default policy)."""
    from hotrelease.config.project import find_config, load_config

    try:
        path = find_config(explicit)
    except ConfigError:
        return None
    return load_config(path)


def _decide(config: Path | None, manifest: Path | None, version: str | None, name: str | None,
            baseline: str | None, repo: Path | None, labels: list[Path] | None,
            bundle_sha256: str | None, rollback: bool, now: str | None) -> Any:
    if manifest is not None and version is not None:
        raise UsageError("give --manifest or --version, not both")
    from hotrelease.build.git import open_view

    view = open_view(repo or Path.cwd())  # git lists tags while we read the rest

    from hotrelease.config.inventory import lane_stages
    from hotrelease.gate.inputs import decide_release
    from hotrelease.rollout.baseline import fleet_baseline
    from hotrelease.trust.manifest import load_manifest

    cfg = _optional_config(config)
    inventory = cfg.inventory if cfg is not None else None
    loaded = load_manifest(existing_file(manifest, "manifest")) if manifest else None
    if loaded is not None and name is not None and name != loaded.name:
        raise UsageError(f"--name {name} but the manifest is for {loaded.name}")
    decision = decide_release(cfg, manifest=loaded, manifest_path=manifest, name=name,
                              version=version, bundle_sha256=bundle_sha256, baseline=baseline,
                              repo=view if view is not None else (repo or Path.cwd()),
                              labels=labels or [], now=parse_now(now),
                              rollback=rollback, stages=lane_stages(inventory),
                              fleet_baseline=fleet_baseline(inventory))
    if decision.refused:
        raise PolicyError(decision.refused, code="downgrade")
    return decision, cfg


def _write_dotenv(decision: Any, path: Path | None) -> None:
    if path is not None:
        path.write_text(decision.dotenv())
        info(f"wrote {path}")


def _echo_rules(decision: Any) -> None:
    typer.echo("rules:")
    for reason in decision.reasons:
        typer.echo(f"  - {reason.rule}: {reason.message}")


def _baseline_text(decision: Any) -> str:
    if decision.baseline is None:
        return f"none ({decision.baseline_source})"
    return f"{decision.baseline} ({decision.baseline_source})"


def classify_cmd(
    manifest: Path | None = MANIFEST_OPTION, version: str | None = VERSION_OPTION,
    name: str | None = NAME_OPTION, baseline: str | None = FROM_OPTION,
    repo: Path | None = REPO_OPTION, label: list[Path] | None = LABEL_OPTION,
    bundle_sha256: str | None = DIGEST_OPTION, rollback: bool = ROLLBACK_OPTION,
    config: Path | None = CONFIG_OPTION, now: str | None = NOW_OPTION,
    dotenv: Path | None = DOTENV_OPTION, json_out: bool = JSON_OPTION,
) -> None:
    """Classify an update: major, feature, patch, security, no-change or downgrade."""
    decision, _ = _decide(config, manifest, version, name, baseline, repo, label,
                          bundle_sha256, rollback, now)
    _write_dotenv(decision, dotenv)
    if json_out:
        emit_json(decision.to_dict())
        return
    typer.echo(f"{decision.name} {decision.version}: {decision.release_class}")
    typer.echo(f"baseline: {_baseline_text(decision)}")
    typer.echo(f"lane:     {decision.lane}")
    _echo_rules(decision)


def plan_cmd(
    manifest: Path | None = MANIFEST_OPTION, version: str | None = VERSION_OPTION,
    name: str | None = NAME_OPTION, baseline: str | None = FROM_OPTION,
    repo: Path | None = REPO_OPTION, label: list[Path] | None = LABEL_OPTION,
    bundle_sha256: str | None = DIGEST_OPTION, rollback: bool = ROLLBACK_OPTION,
    notify: bool = typer.Option(False, "--notify",
                                help="If the lane is urgent, run the [notify] hook now."),
    config: Path | None = CONFIG_OPTION, now: str | None = NOW_OPTION,
    dotenv: Path | None = DOTENV_OPTION, json_out: bool = JSON_OPTION,
) -> None:
    """Plan a release: class, lane, rules, earliest start, approvals, plan digest."""
    decision, cfg = _decide(config, manifest, version, name, baseline, repo, label,
                            bundle_sha256, rollback, now)
    if decision.lane != "none" and decision.not_before is None:
        why = decision.reasons[-1].message
        raise ConfigError(f"cannot plan {decision.name} {decision.version}: {why}")
    notified: list[str] = []
    if notify and decision.notify:
        from hotrelease.rollout.notify import nobody_to_notify, notify_urgent

        nobody = nobody_to_notify(cfg.notify if cfg is not None else None,
                                  cfg.path if cfg is not None else "no hotrelease.toml")
        if nobody is not None:
            info(f"warning: {nobody}")
        else:
            notified = notify_urgent(decision, cfg.notify)
    _write_dotenv(decision, dotenv)
    stage_plan = _stage_plan(cfg, decision)
    data = decision.to_dict()
    if stage_plan is not None:
        # The stage plan of the configured fleet decides which stages wait for an approval.
        data["approval_stages"] = [p.name for p in stage_plan if p.needs_approval]
        data["stage_plan"] = [{"stage": p.name, "nodes": list(p.nodes),
                               "needs_approval": p.needs_approval,
                               "bake_seconds": p.bake_seconds,
                               "failure_threshold": p.failure_threshold} for p in stage_plan]
    if json_out:
        emit_json({**data, "notified": notified})
        return
    typer.echo(f"plan for {decision.name} {decision.version}")
    typer.echo(f"class:       {decision.release_class} (bump {decision.bump})")
    typer.echo(f"baseline:    {_baseline_text(decision)}")
    typer.echo(f"lane:        {decision.lane}" + (" (break-glass)" if decision.break_glass
                                                   else ""))
    typer.echo(f"not before:  {data['not_before'] or '-'}")
    stages = (", ".join(f"{p.name} ({', '.join(p.nodes) or 'no node'})" for p in stage_plan)
              if stage_plan is not None else ", ".join(decision.stages))
    typer.echo(f"stages:      {stages}"
               + (" (canary only: prerelease)" if decision.canary_only else ""))
    typer.echo(f"approval:    {', '.join(data['approval_stages']) or 'none required'}")
    typer.echo(f"plan digest: {decision.plan_digest}")
    for line in notified:
        typer.echo(f"notified:    {line}")
    if notify and decision.notify and not notified:
        typer.echo("notified:    nobody (no [notify] webhook or command)")
    _echo_rules(decision)


def _stage_plan(cfg: Any | None, decision: Any) -> list[Any] | None:
    """Which nodes each stage reaches and which stages need an approval, when the config
    names the fleet (the same plan `publish` and the GitLab child pipeline use)."""
    inventory = cfg.inventory if cfg is not None else None
    if inventory is None or not inventory.nodes or decision.lane == "none":
        return None
    from hotrelease.rollout.plan import release_plan

    return release_plan(f"{decision.name}@{decision.version}", inventory, decision)


def windows_cmd(
    count: int = typer.Option(5, "-n", "--count", min=1, max=1000,
                              help="How many upcoming windows to list."),
    config: Path | None = CONFIG_OPTION, now: str | None = NOW_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """List the next N maintenance windows (freezes already cut out)."""
    from hotrelease.config.project import load_config

    cfg = load_config(config)
    moment = parse_now(now)
    schedule = cfg.schedule
    if not schedule.windows:
        raise ConfigError(f"{cfg.path}: no [[windows]] configured")
    slots = schedule.upcoming(moment, count)
    frozen = [f.name for f in schedule.freezes_at(moment)]
    zones = {w.name: w.recurrence.tz for w in schedule.windows}
    rows = [{"window": s.window, "start": s.start.strftime("%Y-%m-%dT%H:%M:%SZ"),
             "end": s.end.strftime("%Y-%m-%dT%H:%M:%SZ"),
             "local_start": s.start.astimezone(zones[s.window]).isoformat()
             if s.window in zones else None,
             "timezone": zones[s.window].key if s.window in zones else None} for s in slots]
    if json_out:
        emit_json({"now": moment.strftime("%Y-%m-%dT%H:%M:%SZ"), "frozen_now": frozen,
                   "windows": rows})
        return
    if frozen:
        typer.echo(f"frozen now: {', '.join(frozen)}")
    typer.echo(f"{'#':>3}  {'window':<16} {'start (UTC)':<21} {'end (UTC)':<21} local start")
    for i, row in enumerate(rows, 1):
        typer.echo(f"{i:>3}  {row['window']:<16} {row['start']:<21} {row['end']:<21} "
                   f"{row['local_start']} {row['timezone']}")
    if len(rows) < count:
        typer.echo(f"(only {len(rows)} window(s) found in the search horizon)")


label_app = typer.Typer(help="Signed labels (security team).", no_args_is_help=True)


@label_app.command("security")
def label_security(
    name: str | None = typer.Option(None, "--name", help="Plugin name."),
    version: str | None = typer.Option(None, "--version", help="Exact version it fixes."),
    advisory: str = typer.Option(..., "--advisory", help="Advisory id, e.g. CVE-2026-1234."),
    severity: str = typer.Option(..., "--severity", help="low, medium, high or critical."),
    key: Path | None = typer.Option(None, "--key", help="Security-team private key (PEM)."),
    key_env: str | None = typer.Option(None, "--key-env", metavar="VAR",
                                       help="Read the private key from this variable."),
    passphrase_env: str | None = typer.Option(None, "--passphrase-env", metavar="VAR",
                                              help="Passphrase variable for the key."),
    bundle_sha256: str | None = typer.Option(None, "--bundle-sha256", metavar="HEX",
                                             help="Bundle digest the label is bound to."),
    manifest: Path | None = typer.Option(None, "--manifest", "-m", dir_okay=False,
                                         help="Take name, version and digest from this."),
    expires_days: int = typer.Option(30, "--expires-days", min=1, max=3650,
                                     help="Days until the label expires."),
    out: Path | None = typer.Option(None, "--out", dir_okay=False,
                                    help="Label file (default NAME-VERSION.security.json "
                                         "beside the manifest, or here)."),
    replace: bool = typer.Option(False, "--replace",
                                 help="Write a fresh label instead of co-signing an existing "
                                      "one (drops its signatures)."),
    now: str | None = NOW_OPTION, json_out: bool = JSON_OPTION,
) -> None:
    """Write a security label signed by a security-team key (run again to co-sign)."""
    from hotrelease.trust.keys import load_private_key
    from hotrelease.trust.labels import label_path_for, make_label, save_label, sign_label
    from hotrelease.trust.manifest import load_manifest

    if manifest is not None:
        m = load_manifest(existing_file(manifest, "manifest"))
        for flag, given, actual in (("--name", name, m.name), ("--version", version, m.version),
                                    ("--bundle-sha256", bundle_sha256, m.bundle.sha256)):
            if given is not None and given != actual:
                raise UsageError(f"{flag} {given} does not match the manifest ({actual})")
        name, version, bundle_sha256 = m.name, m.version, m.bundle.sha256
    if not name or not version or not bundle_sha256:
        raise UsageError("give --name, --version and --bundle-sha256, or --manifest")
    if key is None and key_env is None:
        raise UsageError("give --key FILE or --key-env VAR (a security-team key)")
    label = make_label(name=name, version=version, bundle_sha256=bundle_sha256,
                       advisory=advisory, severity=severity, now=parse_now(now),
                       expires_days=expires_days)
    path = out or label_path_for(name, version, manifest.parent if manifest else Path.cwd())
    private = load_private_key(key, env=None if key else key_env,
                               passphrase=read_passphrase(passphrase_env))
    envelope = None
    sig_path = Path(f"{path}.sig")
    if path.exists() and sig_path.exists() and not replace:
        label, envelope = _cosign_target(path, label)
        info(f"co-signing the existing label {path} (it keeps its expiry "
             f"{label.to_dict()['expires']}; --replace writes a fresh one)")
    envelope, keyid = sign_label(label, private, envelope)
    save_label(label, envelope, path)
    if json_out:
        emit_json({"label": str(path), "signature": str(sig_path), "keyid": keyid,
                   "signatures": len(envelope.signatures), **label.to_dict()})
    else:
        typer.echo(f"labelled {label.label_id} ({label.severity}), signed by key {keyid[:12]}")
        typer.echo(f"label: {path} (+ .sig, {len(envelope.signatures)} signature(s)), "
                   f"expires {label.to_dict()['expires']}")


def _cosign_target(path: Path, wanted: Any) -> tuple[Any, Any]:
    """An existing label for the same release and advisory is co-signed, not replaced."""
    from hotrelease.errors import HotreleaseError
    from hotrelease.trust.canonical import strict_loads
    from hotrelease.trust.keys import Envelope
    from hotrelease.trust.labels import SecurityLabel

    try:
        existing = SecurityLabel.from_dict(strict_loads(path.read_bytes()))
    except (ValueError, HotreleaseError):
        raise UsageError(f"{path}: exists and is not a label; remove it or use --out") from None
    same = (existing.name, existing.version, existing.bundle_sha256, existing.advisory) == \
        (wanted.name, wanted.version, wanted.bundle_sha256, wanted.advisory)
    if not same:
        raise UsageError(f"{path}: exists for {existing.label_id}; remove it or use --out")
    return existing, Envelope.load(Path(f"{path}.sig"))


def register(app: typer.Typer) -> None:
    app.command("classify")(classify_cmd)
    app.command("plan")(plan_cmd)
    app.command("windows")(windows_cmd)
    app.add_typer(label_app, name="label")
