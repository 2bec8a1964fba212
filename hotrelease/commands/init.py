"""init, pipeline: how a plugin repository adopts hotrelease in GitLab CI.

Thin: parse, call `hotrelease.ci.scaffold` / `hotrelease.ci.pipeline`, format. Heavy imports stay
inside the functions so `hotrelease --help` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from hotrelease.commands._common import (
    CONFIG_OPTION,
    JSON_OPTION,
    NOW_OPTION,
    emit_json,
    info,
    parse_now,
)
from hotrelease.errors import UsageError


def init_cmd(
    directory: Path = typer.Argument(Path("."), metavar="[DIR]",
                                     help="The plugin repository (default: here).",
                                     file_okay=False),
    go: bool = typer.Option(False, "--go", help="Scaffold a Go plugin (-buildmode=plugin)."),
    python: bool = typer.Option(False, "--python", help="Scaffold a Python plugin (default)."),
    name: str | None = typer.Option(None, "--name", help="Plugin name (default: the "
                                                         "directory's name)."),
    node: list[str] = typer.Option([], "--node", metavar="NAME=URL",
                                   help="An agent of the fleet (repeat). Default: "
                                        "node-1=http://127.0.0.1:7701."),
    window: str | None = typer.Option(None, "--window", metavar="SPEC",
                                      help="Maintenance window 'DAYS HH:MM DURATION [TZ]', "
                                           "e.g. 'tue,thu 03:00 2h Europe/Berlin'."),
    bake_seconds: int = typer.Option(60, "--bake-seconds", min=0,
                                     help="How long the canary must stay healthy (scheduled "
                                          "lane; the urgent lane uses half)."),
    security_key: Path | None = typer.Option(
        None, "--security-key", metavar="PUB", dir_okay=False, exists=True,
        help="The security team's public key: agents trust labels it signs. Default: keep "
             "keys/security.pub, else make a pair (.hotrelease/security.key for the team)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files (keys and "
                                                      "the agent token are always kept)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Write hotrelease.toml, .gitlab-ci.yml, the pipeline, agent config, unit and a plugin."""
    from hotrelease.ci.scaffold import DEFAULT_WINDOW, InitOptions, init_project, parse_node

    if go and python:
        raise UsageError("give --go or --python, not both")
    opts = InitOptions(directory=directory, kind="go" if go else "python", name=name,
                       nodes=[parse_node(n) for n in node], window=window or DEFAULT_WINDOW,
                       bake_seconds=bake_seconds, urgent_bake_seconds=bake_seconds // 2,
                       force=force, security_key=security_key)
    result = init_project(opts)
    rel = [str(p.relative_to(directory)) for p in result.written]
    if json_out:
        emit_json({"directory": str(directory), "name": result.name, "written": rel,
                   "kept": [str(p.relative_to(directory)) for p in result.kept],
                   "updated": [str(p.relative_to(directory)) for p in result.updated],
                   "keyid": result.keyid, "security_keyid": result.security_keyid,
                   "security_signing_key": str(result.security_signing_key)
                   if result.security_signing_key else None,
                   "signing_key": str(result.signing_key) if result.signing_key else None,
                   "agent_token": str(result.agent_token) if result.agent_token else None})
        return
    typer.echo(f"initialised {opts.kind} plugin {result.name!r} in {directory}:")
    for name in rel:
        typer.echo(f"  wrote {name}")
    for updated in result.updated:
        typer.echo(f"  added hotrelease entries to {updated.relative_to(directory)}")
    for kept in result.kept:
        typer.echo(f"  kept  {kept.relative_to(directory)}")
    typer.echo(f"release key id: {result.keyid[:16]}; security key id: "
               f"{result.security_keyid[:16]}")
    typer.echo("next:")
    typer.echo("  1. commit everything (the private files under .hotrelease/ are git-ignored)")
    if result.signing_key is not None:
        typer.echo("  2. GitLab > Settings > CI/CD > Variables, masked + protected:")
        typer.echo(f"       HOTRELEASE_SIGNING_KEY = output of: base64 -w0 {result.signing_key}")
    else:
        typer.echo("  2. GitLab > Settings > CI/CD > Variables, masked + protected:")
        typer.echo("       HOTRELEASE_SIGNING_KEY = base64 of your existing release key")
    typer.echo(f"       HOTRELEASE_AGENT_TOKEN = output of: cat {result.agent_token}")
    typer.echo("     then move both files somewhere safe and delete them here")
    if result.security_signing_key is not None:
        typer.echo(f"     hand {result.security_signing_key} to the security team (they sign "
                   "labels with it: `hotrelease label security --key ...`) and delete it here")
    typer.echo("  3. on each node: copy deploy/ to /etc/hotrelease/, install "
               "deploy/hotrelease-agent.service")
    typer.echo("  4. protect tags v* and the environment 'production'; push tag v0.1.0")


def pipeline_cmd(
    lane: str = typer.Option(..., "--lane", help="urgent, scheduled or none (from classify: "
                                                 "$HOTRELEASE_LANE)."),
    manifest: Path = typer.Option(..., "--manifest", "-m", metavar="FILE", dir_okay=False,
                                  help="The signed release manifest."),
    plan: str | None = typer.Option(None, "--plan", metavar="DIGEST",
                                    help="Refuse if the plan changed since classify "
                                         "($HOTRELEASE_PLAN_DIGEST); publish jobs re-check."),
    out: Path = typer.Option(Path("hotrelease-child.yml"), "--out", dir_okay=False,
                             help="Where to write the child pipeline YAML."),
    parent_job: str = typer.Option("hotrelease-route", "--parent-job",
                                   help="Job whose artifacts (dist/) the child jobs fetch."),
    environment: str | None = typer.Option(None, "--environment",
                                           help="GitLab environment (default "
                                                "$HOTRELEASE_ENVIRONMENT or production)."),
    skip_done: bool = typer.Option(False, "--skip-done",
                                   help="Ask the agents and leave out stages the fleet has "
                                        "already completed (best effort)."),
    config: Path | None = CONFIG_OPTION,
    now: str | None = NOW_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Write the child pipeline for a lane (GitLab: trigger: include: - artifact:)."""
    from hotrelease.ci.pipeline import gather_spec, render_child

    spec = gather_spec(lane=lane, manifest=manifest, config=config, plan_digest=plan,
                       now=parse_now(now), env=os.environ, environment=environment,
                       parent_job=parent_job, skip_done=skip_done)
    text = render_child(spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    jobs = [line[:-1] for line in text.splitlines()
            if line.startswith("hotrelease-") and line.endswith(":")]
    if json_out:
        emit_json({"out": str(out), "lane": spec.lane, "release": spec.release,
                   "skipped_done": spec.done,
                   "plan_digest": spec.plan_digest, "jobs": jobs,
                   "stages": [{"name": s.name, "approval": s.needs_approval,
                               "nodes": list(s.nodes)} for s in spec.stages]})
        return
    info(f"wrote {out}")
    typer.echo(f"{spec.release}: {spec.lane} lane -> child pipeline with {', '.join(jobs)}")
    if spec.lane == "scheduled" and spec.not_before:
        typer.echo(f"earliest start (window): {spec.not_before}")


def register(app: typer.Typer) -> None:
    app.command("init")(init_cmd)
    app.command("pipeline")(pipeline_cmd)
