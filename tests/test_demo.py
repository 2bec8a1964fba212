"""README's first command works and leaves nothing behind."""

from __future__ import annotations

import re
from pathlib import Path

from hotrelease.errors import EXIT_OK


def test_demo_runs_end_to_end(cli):
    result = cli("demo", timeout=300)
    assert result.code == EXIT_OK, result.stderr
    assert "verify: signatures, digests, sizes and expiry OK" in result.stdout
    assert "tampered copy refused" in result.stdout
    workspace = re.search(r"demo workspace: (\S+)", result.stdout).group(1)
    assert not Path(workspace).exists()
