"""The CLI's answers mean what README's exit code table says: one line on stderr, a
documented code, a traceback only with --debug."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hotrelease.errors import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE


@pytest.mark.parametrize("path", ["/nonexistent/x.env", "{tmp}/a-file/x.env"])
def test_an_unwritable_output_path_is_an_input_error_in_one_line(cli, tmp_path, path) -> None:
    (tmp_path / "a-file").write_text("a file, not a folder")
    target = path.format(tmp=tmp_path)
    result = cli("classify", "--name", "foo", "--version", "1.2.3", "--from", "1.2.2",
                 "--dotenv", target, cwd=tmp_path)
    assert result.code == EXIT_USAGE, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == result.error_line and target in result.error_line
    twin = cli("classify", "--name", "foo", "--version", "1.2.3", "--from", "1.2.2",
               "--dotenv", tmp_path / "ok.env", cwd=tmp_path)
    assert twin.code == EXIT_OK and "HOTRELEASE_CLASS=patch" in (tmp_path / "ok.env").read_text()


BUG = ("import sys, hotrelease.gate.inputs as gate\n"
       "def broken(*args, **kwargs):\n"
       "    raise KeyError('slot')\n"
       "gate.decide_release = broken\n"
       "from hotrelease.cli import main\n"
       "sys.argv[0] = 'hotrelease'\n"
       "main()\n")


def _run_with_a_bug(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BUG, *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


def test_an_exception_outside_the_error_tree_is_one_line_with_its_own_code(tmp_path) -> None:
    result = _run_with_a_bug("classify", "--name", "foo", "--version", "1.2.3", cwd=tmp_path)
    assert result.returncode == EXIT_INTERNAL
    assert result.stderr.strip() == "hotrelease: error: internal error: KeyError: 'slot'"
    debug = _run_with_a_bug("--debug", "classify", "--name", "foo", "--version", "1.2.3",
                            cwd=tmp_path)
    assert debug.returncode == EXIT_INTERNAL
    assert "Traceback" in debug.stderr and "in broken" in debug.stderr


def test_json_errors_carry_the_exit_code(cli, tmp_path) -> None:
    result = cli("classify", "--name", "foo", "--version", "1.2", "--json", cwd=tmp_path)
    assert result.code == EXIT_USAGE
    assert '"exit_code": 2' in result.stdout and '"ok": false' in result.stdout
