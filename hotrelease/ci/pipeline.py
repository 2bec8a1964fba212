"""The child pipeline of a lane: what `hotrelease pipeline --lane ...` writes for GitLab.

GitLab decides which jobs exist (their `rules:`) when it creates a pipeline, before any job
ran; the lane that `classify` decides at run time therefore cannot switch jobs of the same
pipeline on or off. The parent pipeline's route job runs this generator and hands the YAML
to a trigger job (`trigger: include: - artifact: ... job: ...`), so the rest of the rollout
is exactly the lane's jobs, with the manifest, plan digest and stages written in literally.

Pure: `render_child()` turns a `ChildSpec` into YAML text; `gather_spec()` (the I/O half)
reads the config, the manifest's decision and the stage plan (the release session's, or
without nodes the decision's own stages). Imports `rollout`, `config`, `gate` and `trust`;
only `commands` imports it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hotrelease.errors import PolicyError, UsageError
from hotrelease.gate.policy import LANES as POLICY_LANES
from hotrelease.trust.times import format_time

LANES = (*POLICY_LANES, "none")  # a pipeline may also say: nothing to roll out
EXIT_NOT_NOW = 3
DEFAULT_IMAGE = "python:3.12-bookworm"
DEFAULT_PIP_SPEC = "hotrelease==0.1.0"
DEFAULT_ENVIRONMENT = "production"
DEFAULT_PARENT_JOB = "hotrelease-route"

INSTALL_SCRIPT = """\
if ! command -v hotrelease >/dev/null 2>&1; then
  command -v python3 >/dev/null 2>&1 || {
    apt-get update -qq && apt-get install -y -qq python3 python3-venv git >/dev/null; }
  python3 -m venv /tmp/hotrelease-venv
  /tmp/hotrelease-venv/bin/pip install --quiet --disable-pip-version-check "$HOTRELEASE_PIP_SPEC"
  export PATH="/tmp/hotrelease-venv/bin:$PATH"
fi"""


@dataclass(frozen=True)
class StageJob:
    name: str
    needs_approval: bool
    nodes: tuple[str, ...] = ()


@dataclass
class ChildSpec:
    lane: str
    manifest: str
    release: str  # "name version", for messages
    plan_digest: str | None = None
    release_class: str | None = None
    stages: list[StageJob] = field(default_factory=list)
    environment: str = DEFAULT_ENVIRONMENT
    image: str = DEFAULT_IMAGE
    pip_spec: str = DEFAULT_PIP_SPEC
    parent_job: str = DEFAULT_PARENT_JOB
    deploy_freeze: bool = False  # GitLab's $CI_DEPLOY_FREEZE was set for this pipeline
    break_glass: bool = False  # a signed security patch may pierce a deploy freeze
    not_before: str | None = None  # informational: the window (publish decides)
    # Jobs that change nodes take this GitLab resource group: one at a time per environment.
    resource_group: str = "hotrelease-$CI_PROJECT_PATH_SLUG-production"
    done: list[str] = field(default_factory=list)  # stages complete on the fleet (skipped)


# --- a small YAML writer: block mappings/sequences, every string double-quoted ------------

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


def _block(value: str, indent: int) -> str | None:
    """A literal block scalar for multi-line script text, when it round-trips exactly."""
    lines = value.split("\n")
    if value.endswith("\n") or any(ln != ln.rstrip() or "\t" in ln for ln in lines) \
            or not lines[0] or lines[0][0] == " ":
        return None
    pad = " " * (indent + 2)
    return "|-\n" + "\n".join(pad + ln if ln else "" for ln in lines)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if value is None:
        return "null"
    # A JSON string is a valid YAML double-quoted scalar (same escapes).
    return json.dumps(str(value), ensure_ascii=False)


def _key(key: str) -> str:
    return key if _PLAIN_KEY.match(key) else json.dumps(key)


def to_yaml(value: Any, indent: int = 0) -> str:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, (Mapping, list)) and item:
                lines.append(f"{pad}{_key(key)}:")
                lines.append(to_yaml(item, indent + 2).rstrip("\n"))
            elif isinstance(item, Mapping):
                lines.append(f"{pad}{_key(key)}: {{}}")
            elif isinstance(item, list):
                lines.append(f"{pad}{_key(key)}: []")
            else:
                lines.append(f"{pad}{_key(key)}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (Mapping, list)) and item:
                inner = to_yaml(item, indent + 2).rstrip("\n")
                lines.append(f"{pad}- {inner.lstrip()}")
            elif isinstance(item, str) and "\n" in item and _block(item, indent) is not None:
                lines.append(f"{pad}- {_block(item, indent)}")
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    else:
        lines.append(f"{pad}{_scalar(value)}")
    return "\n".join(lines) + "\n"


# --- the child pipeline --------------------------------------------------------------------


def job_name(kind: str, stage: str) -> str:
    return f"hotrelease-{kind}-{re.sub(r'[^a-z0-9-]+', '-', stage.lower())}"


def _sh(text: str) -> str:
    """Single-quote for a POSIX shell."""
    return "'" + text.replace("'", "'\\''") + "'"


def render_child(spec: ChildSpec) -> str:
    if spec.lane not in LANES:
        raise UsageError(f"--lane must be one of {', '.join(LANES)}, got {spec.lane!r}")
    m = _sh(spec.manifest)
    plan = f" --plan {_sh(spec.plan_digest)}" if spec.plan_digest else ""
    base: dict[str, Any] = {
        "image": spec.image,
        # A newer pipeline must not cancel a rollout half way ("auto-cancel redundant").
        "interruptible": False,
        "variables": {"GIT_DEPTH": "0", "GIT_FETCH_EXTRA_FLAGS": "--tags",
                      "HOTRELEASE_PIP_SPEC": spec.pip_spec},
        "before_script": [INSTALL_SCRIPT, "hotrelease --version"],
    }
    parent_needs = {"pipeline": "$PARENT_PIPELINE_ID", "job": spec.parent_job}
    jobs: dict[str, Any] = {}
    stages: list[str] = []

    def add(name: str, stage: str, script: list[str], **extra: Any) -> None:
        if stage not in stages:
            stages.append(stage)
        needs: list[Any] = [dict(parent_needs)]
        needs += [{"job": n, "artifacts": False} for n in extra.pop("after", [])]
        jobs[name] = {"extends": ".hotrelease-child", "stage": stage, "needs": needs,
                      "script": script, **extra}

    header = (f"# Generated by `hotrelease pipeline` for {spec.release}: {spec.lane} lane"
              + (f", class {spec.release_class}" if spec.release_class else "")
              + (f", plan {spec.plan_digest}" if spec.plan_digest else "")
              + ".\n# Do not edit: the route job writes it for every release.\n")

    frozen = spec.deploy_freeze and not (spec.lane == "urgent" and spec.break_glass)
    pending = [s for s in spec.stages if s.name not in spec.done]
    if spec.lane == "none" or frozen or not pending:
        if spec.lane == "none":
            message = f"{spec.release}: nothing to roll out (lane none)"
            code = 0
        elif not pending:
            message = (f"{spec.release}: nothing pending, every stage is complete on the "
                       f"fleet ({', '.join(spec.done)})")
            code = 0
        else:
            message = (f"{spec.release}: GitLab deploy freeze is active ($CI_DEPLOY_FREEZE): "
                       f"the {spec.lane} lane waits; a scheduled pipeline publishes it after "
                       "the freeze")
            code = EXIT_NOT_NOW
        extra: dict[str, Any] = {}
        if code:
            extra["allow_failure"] = {"exit_codes": [code]}
        add("hotrelease-hold", "hold", [f"echo {_sh(message)}", f"exit {code}"], **extra)
        return header + to_yaml({"stages": stages, ".hotrelease-child": base, **jobs})

    env = {"name": spec.environment, "deployment_tier": "production", "action": "start"}
    previous: str | None = None
    if spec.lane == "urgent":
        note = (f"urgent lane: {spec.release} ships now, canary first"
                + ("; break-glass: signed security patch pierces the GitLab deploy freeze"
                   if spec.deploy_freeze else ""))
        add("hotrelease-notify", "notify",
            [f"echo {_sh(note)}", f"hotrelease plan --manifest {m} --notify"])
        previous = "hotrelease-notify"
    for stage in pending:
        # The child's own notify job tells ops; publish must not notify a second time.
        publish = f"hotrelease publish {m} --stage {_sh(stage.name)}{plan} --no-notify"
        targets = ", ".join(stage.nodes) or "no node"
        extra = {"environment": dict(env), "after": [previous] if previous else [],
                 "resource_group": spec.resource_group}
        if stage.needs_approval:
            name = job_name("approve", stage.name)
            script = [f"echo {_sh(f'approving stage {stage.name} ({targets})')}",
                      f"hotrelease approve {m} --stage {_sh(stage.name)}"
                      + ' ${HOTRELEASE_APPROVER_KEY:+--key-env HOTRELEASE_APPROVER_KEY}',
                      publish]
            extra.update(when="manual", allow_failure=False)
        else:
            name = job_name("publish", stage.name)
            script = [f"echo {_sh(f'stage {stage.name}: {targets}')}", publish]
        if spec.lane == "scheduled":
            script.insert(0, 'if [ -n "${CI_DEPLOY_FREEZE:-}" ]; then echo "GitLab deploy '
                             'freeze is active: not now"; exit 3; fi')
            # Outside the window `publish` exits 3 and says when it opens: a warning, not a
            # failure; the scheduled pipeline publishes the release inside the window.
            extra["allow_failure"] = {"exit_codes": [EXIT_NOT_NOW]} \
                if not stage.needs_approval else False
        add(name, stage.name, script, **extra)
        previous = name
    add("hotrelease-rollback", "rollback",
        [f"hotrelease rollback {m}"], when="manual", allow_failure=True,
        environment=dict(env), resource_group=spec.resource_group)
    return header + to_yaml({"stages": stages, ".hotrelease-child": base, **jobs})


# --- gathering the inputs --------------------------------------------------------------------


def gather_spec(*, lane: str, manifest: Path, config: Path | None, plan_digest: str | None,
                now: datetime, env: Mapping[str, str], environment: str | None = None,
                image: str | None = None, pip_spec: str | None = None,
                parent_job: str = DEFAULT_PARENT_JOB, skip_done: bool = False) -> ChildSpec:
    """The decision for MANIFEST under the project config, cross-checked against `lane`."""
    from hotrelease.config.inventory import lane_stages
    from hotrelease.config.project import load_config
    from hotrelease.trust.manifest import load_manifest

    if lane not in LANES:
        raise UsageError(f"--lane must be one of {', '.join(LANES)}, got {lane!r}")
    if not manifest.is_file():
        raise UsageError(f"{manifest}: manifest not found")
    cfg = load_config(config)
    inventory = cfg.inventory
    stages: list[StageJob]
    done: list[str] = []
    if inventory.nodes:
        from hotrelease.rollout.session import FleetSession

        session = FleetSession.open(manifest, config=cfg.path, now=now)
        decision = session.decision
        # A stage that reaches no node has no job (its gate, if any, moved to one that does).
        stages = [StageJob(p.name, p.needs_approval, p.nodes) for p in session.plans()
                  if p.nodes]
        name, version = session.manifest.name, session.manifest.version
        if skip_done and decision.lane == lane:
            done = _done_stages(session)
    else:
        from hotrelease.gate.inputs import decide_release

        m = load_manifest(manifest)
        decision = decide_release(cfg, manifest=m, manifest_path=manifest, repo=cfg.root,
                                  now=now, env=env, stages=lane_stages(inventory))
        # No fleet to assign: a job per stage of the decision, gated as it decided.
        gated = set(decision.approval_stages)
        stages = [StageJob(stage, stage in gated) for stage in decision.stages]
        name, version = m.name, m.version
    if decision.lane != lane:
        raise PolicyError(f"--lane {lane} but {name} {version} is decided {decision.lane} now "
                          "(did the config, labels or tags change since classify?)",
                          code="lane_mismatch")
    if plan_digest is not None and plan_digest != decision.plan_digest:
        raise PolicyError(f"plan changed since classify: expected {plan_digest}, now "
                          f"{decision.plan_digest}", code="plan_changed")
    environment = environment or env.get("HOTRELEASE_ENVIRONMENT") or DEFAULT_ENVIRONMENT
    accepted_signed = any(getattr(c, "signed", False) and not getattr(c, "problem", None)
                          for c in decision.claims)
    return ChildSpec(
        lane=lane, manifest=str(manifest), release=f"{name} {version}",
        plan_digest=decision.plan_digest, release_class=decision.release_class,
        stages=stages,
        environment=environment,
        resource_group="hotrelease-$CI_PROJECT_PATH_SLUG-"
                       + re.sub(r"[^A-Za-z0-9_.-]+", "-", environment),
        done=done,
        image=image or env.get("HOTRELEASE_IMAGE") or DEFAULT_IMAGE,
        pip_spec=pip_spec or env.get("HOTRELEASE_PIP_SPEC") or DEFAULT_PIP_SPEC,
        parent_job=parent_job,
        deploy_freeze=bool(env.get("CI_DEPLOY_FREEZE")),
        break_glass=(decision.release_class == "security" and accepted_signed
                     and cfg.policy.break_glass),
        not_before=None if decision.not_before is None
        else format_time(decision.not_before),
    )


def _done_stages(session: Any) -> list[str]:
    """Stages the fleet already completed for this release (the fleet is the ledger). The
    agents unreachable or the answer unreadable: nothing is skipped, publish decides."""
    try:
        status = session.status()
        return [str(s["stage"]) for s in status.get("stages", []) if s.get("done")]
    except Exception:  # noqa: BLE001 - best effort: the child's publish jobs re-check
        return []
