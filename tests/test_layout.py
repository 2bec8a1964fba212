"""The package layout is a checked contract: `lint-imports` keeps the rooms' import rules
(pyproject.toml, [tool.importlinter]) and fails when a lower room imports a higher one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "hotrelease"
MAX_MODULE_LINES = 400
LINT_IMPORTS = [sys.executable, "-c",
                "from importlinter.cli import lint_imports_command; lint_imports_command()"]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """The contract checker on the package found under `root` (PYTHONPATH wins over the
    editable install, so a planted copy is what gets analysed)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([*LINT_IMPORTS, str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold() -> None:
    result = lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module,planted,broken", [
    # the trust core reaching up into the rollout
    ("trust/canonical.py", "import hotrelease.rollout.session", "Layers"),
    # the gate asking the fleet (the edge issue 12 removed)
    ("gate/inputs.py", "from hotrelease.rollout import nodes", "Layers"),
    # the agent importing the version gate
    ("agent/store.py", "import hotrelease.gate.classify", "The node agent"),
    # a cycle inside one room
    ("trust/canonical.py", "import hotrelease.trust.manifest", "No import cycles"),
])
def test_a_wrong_way_import_breaks_the_contract(tmp_path: Path, module: str, planted: str,
                                                 broken: str) -> None:
    shutil.copytree(PACKAGE, tmp_path / "hotrelease",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "hotrelease" / module
    target.write_text(target.read_text() + f"\n{planted}  # planted by the test\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    broken_lines = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(broken) for line in broken_lines), result.stdout
    dotted = f"hotrelease.{module[:-3].replace('/', '.')}"
    # the report names the planted import (cycles are listed relative to their package)
    assert dotted in result.stdout or f"- .{dotted.rsplit('.', 1)[1]} ->" in result.stdout


def test_no_module_is_a_mountain() -> None:
    """A module one person can read in a sitting: none over ~400 lines."""
    sizes = {str(p.relative_to(REPO_ROOT)): len(p.read_text().splitlines())
             for p in PACKAGE.rglob("*.py")}
    assert {path: n for path, n in sizes.items() if n > MAX_MODULE_LINES} == {}
