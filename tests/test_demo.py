"""README's first command: the whole product on this machine, and nothing left running."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from hotrelease.errors import EXIT_OK


def _processes_under(path: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if path in line]


def test_demo_tells_the_whole_story_and_cleans_up(cli):
    result = cli("demo", timeout=300)
    assert result.code == EXIT_OK, result.stderr
    out = result.stdout
    workspace = re.search(r"demo workspace: (\S+)", out).group(1)
    # 1. first rollout: canary, approval, all
    assert "[major, scheduled lane" in out and "hotrelease approve --stage all" in out
    # 2. the feature release waits for its window, then goes
    assert re.search(r"NotNowError \(exit 3\): greeter@1\.1\.0 .*next window opens at", out)
    # 3. the signed security patch goes straight through the urgent lane
    assert "greeter@1.1.1 (security, urgent lane): ran canary, all" in out
    # 4. the broken release is caught by the canary and rolled back
    assert re.search(r"AbortedError \(exit 4\): greeter@1\.2\.0: stage canary failed", out)
    final = out.split("the canary rolled back: 1.1.1 everywhere")[1]
    rows = [ln.split() for ln in final.splitlines() if ln.strip().startswith("node-")]
    assert len(rows) == 3
    assert all(row[1] == "1.1.1" and row[-1] == "1.1.1" for row in rows), final
    assert "nothing left running" in out
    assert not Path(workspace).exists()
    assert _processes_under(workspace) == []
