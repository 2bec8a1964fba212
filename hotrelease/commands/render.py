"""What a person sees of a rollout: the progress display and the text of reports and tables.

The release session (`rollout.session`) reports through callbacks and returns plain dicts;
this module turns them into lines. `Progress` takes the engine's events: a line per event in
CI or without a TTY, a rich progress bar on a terminal. Imported by `commands` only (the demo
receives these formatters from `commands.release`); imports `rollout.engine` for `Event`.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from hotrelease.rollout.engine import Event


class Progress:
    """Plain line-per-event output in CI or without a TTY; a rich bar on a terminal.
    Disabled (`--json`), it shows nothing. Call `close()` when the rollout is over."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.fancy = enabled and sys.stderr.isatty() and \
            os.environ.get("CI", "").lower() not in ("true", "1")
        self._bar: Any = None
        self._task: Any = None
        self._lock = threading.Lock()  # events come from the worker threads

    def __call__(self, event: Event) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._show(event)

    def _show(self, event: Event) -> None:
        if not self.fancy:
            # One write per line: lines from concurrent workers must not run together.
            sys.stderr.write(f"[{event.stage or '-'}] {event.message}\n")
            sys.stderr.flush()
            return
        from rich.progress import Progress as Bar

        if event.kind == "stage-start":
            self.close()
            self._bar = Bar(transient=False)
            self._bar.start()
            self._task = self._bar.add_task(event.message, total=max(event.total, 1))
        elif event.kind == "node" and self._bar is not None:
            self._bar.advance(self._task)
            self._bar.console.print(f"  {event.message}")
        else:
            if self._bar is not None:
                self._bar.console.print(event.message)
            else:
                print(event.message, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def publish_lines(report: dict[str, Any]) -> list[str]:
    """`publish` (and its dry run) as text: what ran on which node, what comes next."""
    if report.get("dry_run"):
        lines = [f"DRY RUN {report['release']} ({report['class']}, {report['lane']} lane, "
                 f"plan {report['plan_digest'][:19]}…)"]
        if report.get("gate"):
            lines.append(f"would stop: {report['gate']}")
        lines += [f"  [{r['stage']}] {r['node']}: {r['action']}"
                  + (" (needs approval)" if r["needs_approval"] else "")
                  for r in report["nodes"]]
        return lines
    if report.get("lane") == "none":
        return [f"{report['release']}: {report['message']}"]
    lines = [f"{report['release']} ({report.get('class')}, {report['lane']} lane): "
             f"ran {', '.join(report['stages_run']) or 'no stage'}"]
    lines += [f"  [{n['stage']}] {n['node']}: {n['result']}" for n in report["nodes"]]
    lines.append("rollout complete" if report["complete"]
                 else f"next stage: {report['next_stage']}")
    return lines


def status_lines(result: dict[str, Any]) -> list[str]:
    """`status` as text: the release's stages (if one was named), then a table of nodes."""
    lines = []
    if "release" in result:
        lines.append(f"release {result['release']} ({result['class']}, {result['lane']} lane)"
                     f": stage reached {result['stage_reached'] or 'none'}"
                     + (f"; window opens {result['pending_window']}"
                        if result.get("pending_window") else ""))
        for s in result["stages"]:
            approval = (f"approved by {s['approved_by']}" if s["approved_by"] else
                        "needs approval" if s["needs_approval"] else "no approval needed")
            lines.append(f"  stage {s['stage']:<10} {'done' if s['done'] else 'pending':<8}"
                         f" {approval}; nodes: {', '.join(s['nodes']) or '-'}")
    header = (f"{'NODE':<16} {'VERSION':<14} {'PREVIOUS':<14} {'HEALTH':<8} {'SINCE':<21} "
              "REACHABLE")
    lines.append(header)
    for n in result["nodes"]:
        reachable = ("yes" if n["reachable"] else "NO") + (f": {n['error']}" if n["error"]
                                                            else "")
        lines.append(f"{n['node']:<16} {n['version'] or '-':<14} {n['previous'] or '-':<14} "
                     f"{n['health'] or '-':<8} "
                     f"{short_time(n['since']):<21} "
                     f"{reachable}")
    return lines


def short_time(value: str | None) -> str:
    """2026-11-24T18:47:27.347273Z -> 2026-11-24 18:47:27Z (the table's width)."""
    return value[:19].replace("T", " ") + "Z" if value else "-"
