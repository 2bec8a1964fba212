"""The node agent's operations, one object: `Agent` is the shared core (config, store,
clock, refusals recorded in history) with its jobs attached:

- `ingest` (`agent.ingest`): a release arrives, is verified and stored;
- `activation` (`agent.activation`): switch, reload, health check, automatic rollback, and
  rollbacks on request;
- `floor` (`agent.floor`): security advisories and the security floor they raise;
- `approvals` (`agent.approvals`): stage approvals recorded, and required where configured;
- `recover` (`agent.recovery`): at start-up, finish or undo what a crash interrupted.

The HTTP layer (`agent.app`) only parses requests and maps errors; every decision is in the
jobs. Each refusal raises one `HotreleaseError` with a stable code *after* recording it in
history, and nothing on disk changes before all checks passed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from hotrelease.agent.activation import Activation, Meta
from hotrelease.agent.approvals import Approvals
from hotrelease.agent.config import AgentConfig
from hotrelease.agent.core import AgentCore
from hotrelease.agent.floor import SecurityFloor
from hotrelease.agent.hookregistry import terminate_running_hooks
from hotrelease.agent.ingest import Ingest
from hotrelease.agent.recovery import recover
from hotrelease.agent.wire import HistoryPage, HistoryRecord, PluginStatus
from hotrelease.errors import AgentFailure, BadResponseError, HotreleaseError

__all__ = ["Agent", "Meta"]


class Agent(AgentCore):
    def __init__(self, config: AgentConfig, *,
                 clock: Callable[[], datetime] | None = None) -> None:
        super().__init__(config, clock=clock)
        self.floor = SecurityFloor(self)
        self.approvals = Approvals(self)
        self.ingest = Ingest(self, self.floor)
        self.activation = Activation(self, self.floor, self.approvals)

    def status(self, name: str) -> PluginStatus:
        """A slot as GET /v1/plugins/{name} shows it: its state, what is stored, the security
        floor (or why it is unknown) and the activation under way."""
        state = self.store.load_state(name)
        problem = None
        try:
            floor, advisory = self.floor.floor(name)
        except HotreleaseError as exc:  # unreadable advisory: the floor is unknown, say so
            floor, advisory, problem = None, None, str(exc)
        busy = self.activation.in_progress(name)
        view: dict[str, Any] = {
            **state, "name": name, "stored": self.store.stored_versions(name),
            "security_floor": floor, "security_floor_advisory": advisory,
            **({"security_floor_problem": problem} if problem else {}),
            "current_link": self.store.read_current(name),
            "in_progress": None if busy is None else busy.to_dict()}
        try:
            return PluginStatus.from_dict(view)
        except BadResponseError as exc:  # its state.json, edited into something else
            raise AgentFailure(f"state of {name} is unreadable: {exc}") from None

    def history(self, name: str, limit: int) -> HistoryPage:
        """The newest `limit` history records of `name`, oldest first, as they are on disk: a
        record that is not a `HistoryRecord` (written by hand, say) is passed on unchanged,
        never dropped or rewritten (the client reading it says what is wrong with it)."""
        records = []
        for record in self.store.read_history(name, limit):
            try:
                records.append(HistoryRecord.from_dict(record))
            except BadResponseError:
                records.append(HistoryRecord(unrecognized_fields=dict(record),
                                             keys_seen=tuple(record)))
        return HistoryPage(name=name, records=records)

    def recover(self) -> list[dict[str, Any]]:
        """Start-up: finish or undo what a crash interrupted (see `recovery.py`)."""
        return recover(self)

    def shutdown(self) -> None:
        """The server stopped: no hook the agent started may outlive it."""
        terminate_running_hooks()

