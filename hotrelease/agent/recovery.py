"""Start-up recovery: make `current`, state and history agree after a crash.

Runs before the agent serves. Idempotent: a crash during recovery is recovered by the next
start.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from hotrelease.agent.hooks import run_reload
from hotrelease.agent.store import crash_point

if TYPE_CHECKING:
    from hotrelease.agent.service import Agent


def recover(agent: Agent) -> list[dict[str, Any]]:
    """Finish or undo a switch interrupted by a crash, so `current` and state agree."""
    store = agent.store
    store.open()
    done = []
    for name, pcfg in agent.config.plugins.items():
        store.plugin_dir(name)
        journal_path = store.journal_path(name)
        state = store.load_state(name)
        journal = None
        if journal_path.exists():
            try:
                journal = json.loads(journal_path.read_bytes())
            except ValueError:
                journal = None  # torn write of the journal itself: nothing was switched
        link_version = store.read_current(name)
        recorded = state.get("current")
        if journal is None and link_version == recorded and not journal_path.exists():
            continue
        if link_version != recorded:
            store.switch_current(name, recorded)
        crash_point("recovery.swapped")
        if journal is not None or link_version != recorded:
            current_path = str(store.current_link(name))
            ok, detail = (run_reload(pcfg.reload, name=name, version=recorded,
                                     current_path=current_path)
                          if recorded is not None else (True, "nothing to reload"))
            what = (f"{journal.get('op')} {journal.get('from')} -> {journal.get('to')}"
                    if journal else "switch")
            outcome = ("finished" if journal and recorded == journal.get("to")
                       else "undone")
            rec = store.append_history(name, {
                "action": "recover", "who": "agent", "version": recorded,
                "result": outcome,
                "reason": f"agent restarted during {what}; current is {recorded}",
                "reload": detail if ok else f"reload failed: {detail}"})
            done.append({"name": name, **rec})
        store.clear_journal(name)
    return done
