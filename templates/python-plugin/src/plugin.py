"""Game logic loaded by the Python plugin host (python -m hotrelease.agent.pyhost).

Contract with the host: `VERSION`, `handle(request, state) -> dict`, `health() -> bool`.
Session state lives in `state`, owned by the host, so it survives a hot swap of this module.
"""

from pathlib import Path

VERSION = "0.0.0"  # stamped by build.py
_GREETINGS = (Path(__file__).parent / "greetings.txt").read_text().split()


def handle(request: dict, state: dict) -> dict:
    player = str(request.get("player", "player"))
    state[player] = state.get(player, 0) + 1
    greeting = _GREETINGS[(state[player] - 1) % len(_GREETINGS)]
    return {"message": f"{greeting}, {player}!", "visits": state[player], "version": VERSION}


def health() -> bool:
    return True
