"""publish, approve, status, rollback: what CI jobs and release managers drive."""

from __future__ import annotations

from pathlib import Path

import typer

from hotrelease.commands._common import (
    CONFIG_OPTION,
    JSON_OPTION,
    NOW_OPTION,
    emit_json,
    info,
    parse_now,
    read_passphrase,
)
from hotrelease.errors import EXIT_REFUSED

MANIFEST_ARG = typer.Argument(..., metavar="MANIFEST",
                              help="The release manifest (*.manifest.json); its .sig "
                                   "and bundle are expected beside it.")
LABEL_OPTION = typer.Option([], "--label", help="Signed security label file(s) (default: "
                                                "NAME-VERSION.security.json beside the manifest).")


def publish(
    manifest: Path = MANIFEST_ARG,
    stage: str | None = typer.Option(None, "--stage", help="Run only this stage."),
    all_stages: bool = typer.Option(False, "--all-stages",
                                    help="Run every remaining stage (approvals permitting)."),
    plan: str | None = typer.Option(None, "--plan", metavar="DIGEST",
                                    help="Refuse if the plan changed since `hotrelease plan`."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Print what would happen to which node; change nothing."),
    wait: bool = typer.Option(False, "--wait", help="Outside a window: sleep until it opens."),
    notify: bool = typer.Option(True, "--notify/--no-notify",
                                help="Urgent lane: run the [notify] hook when the first "
                                     "stage starts (off where a pipeline job notifies)."),
    label: list[Path] = LABEL_OPTION,
    config: Path | None = CONFIG_OPTION,
    now: str | None = NOW_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Upload and activate a release stage by stage (canary, approval, waves)."""
    from hotrelease.commands.render import Progress, publish_lines
    from hotrelease.rollout.session import FleetSession

    session = FleetSession.open(manifest, config=config, now=parse_now(now), labels=label)
    progress = Progress(enabled=not json_out)
    try:
        report = session.publish(stage=stage, all_stages=all_stages, plan_digest=plan,
                                 dry_run=dry_run, wait=wait, progress=progress, notice=info,
                                 notify=notify)
    finally:
        progress.close()
    if json_out:
        emit_json(report)
    else:
        for line in publish_lines(report):
            typer.echo(line)


def approve(
    manifest: Path = MANIFEST_ARG,
    stage: str = typer.Option(..., "--stage", help="The stage to approve."),
    by: str | None = typer.Option(None, "--by", help="Approver (default: $GITLAB_USER_LOGIN, "
                                                     "else $USER)."),
    key: Path | None = typer.Option(None, "--key", help="Approver's private key: sign it."),
    key_env: str | None = typer.Option(None, "--key-env", metavar="VAR",
                                       help="Read the approver key from this variable."),
    passphrase_env: str | None = typer.Option(None, "--passphrase-env", metavar="VAR"),
    valid_hours: int = typer.Option(72, "--valid-hours", min=1,
                                    help="How long the approval stays valid."),
    label: list[Path] = LABEL_OPTION,
    config: Path | None = CONFIG_OPTION,
    now: str | None = NOW_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Approve a stage of this exact build; recorded on the agents' history."""
    from hotrelease.rollout.session import FleetSession

    session = FleetSession.open(manifest, config=config, now=parse_now(now), labels=label)
    private = None
    if key is not None or key_env is not None:
        from hotrelease.trust.keys import load_private_key

        private = load_private_key(key, env=None if key else key_env,
                                   passphrase=read_passphrase(passphrase_env))
    result = session.approve(stage, by=by, private_key=private, valid_hours=valid_hours)
    if json_out:
        emit_json(result)
    else:
        typer.echo(f"approved stage {stage} of {result['release']} "
                   f"(digest {result['bundle_sha256'][:12]}…) by {result['approved_by']}"
                   f"{' (signed)' if result['signed'] else ''}; recorded on "
                   f"{len(result['recorded_on'])} node(s)")
        for node, problem in result["not_recorded"].items():
            info(f"warning: not recorded on {node}: {problem}")


def status(
    manifest: Path | None = typer.Argument(None, metavar="[MANIFEST]",
                                           help="A release to report on (optional)."),
    plugin: str | None = typer.Option(None, "--plugin", help="Plugin name (default: config)."),
    label: list[Path] = LABEL_OPTION,
    config: Path | None = CONFIG_OPTION,
    now: str | None = NOW_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Per node: version, previous, health, since, reachable; per release: stage reached,
    approvals, pending window."""
    from hotrelease.rollout.session import FleetSession, fleet_status

    if manifest is not None:
        session = FleetSession.open(manifest, config=config, now=parse_now(now), labels=label)
        result = session.status()
    else:
        result = fleet_status(config=config, plugin=plugin)
    if json_out:
        emit_json(result)
    else:
        from hotrelease.commands.render import status_lines

        for line in status_lines(result):
            typer.echo(line)


def rollback(
    manifest: Path = MANIFEST_ARG,
    stage: str | None = typer.Option(None, "--stage", help="Only this stage's nodes."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be rolled back."),
    allow_expired: bool = typer.Option(
        False, "--allow-expired",
        help="Go back even where the previous version's signed manifest has expired since "
             "it ran (each agent records the override)."),
    label: list[Path] = LABEL_OPTION,
    config: Path | None = CONFIG_OPTION,
    now: str | None = NOW_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Roll nodes running this release back to their previous version."""
    from hotrelease.rollout.session import FleetSession

    session = FleetSession.open(manifest, config=config, now=parse_now(now), labels=label)
    result = session.rollback(stage=stage, dry_run=dry_run, allow_expired=allow_expired)
    if json_out:
        emit_json(result)
    else:
        for item in result["nodes"]:
            typer.echo(f"{item['node']}: {item['result']}"
                       + (f" -> {item['version']}" if item.get("version") else "")
                       + (f" ({item['detail']})" if item.get("detail") else ""))
    failed = [item["node"] for item in result["nodes"] if item["result"] == "failed"]
    if failed:
        # "expired": the agent refused to go back to a manifest that has expired since
        expired = any(item.get("code") == "expired" for item in result["nodes"])
        info(f"hotrelease: error: rollback refused or failed on {', '.join(failed)}"
             + ("; the previous version's manifest has expired: --allow-expired goes back "
                "anyway" if expired else ""))
        raise typer.Exit(EXIT_REFUSED)


def register(app: typer.Typer) -> None:
    app.command()(publish)
    app.command()(approve)
    app.command()(status)
    app.command()(rollback)
