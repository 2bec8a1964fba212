"""Config errors name the file, the key path and what was expected."""

from __future__ import annotations

import pytest

from hotrelease.config.project import load_config
from hotrelease.errors import EXIT_OK, EXIT_USAGE, ConfigError

GOOD = """
[plugin]
name = "greeter"
kind = "python"

[build]
commands = ["python3 build.py --version {version} --out {out}"]

[trust]
release_keys = ["keys/a.pub", "keys/b.pub"]
threshold = 2
"""


def write(tmp_path, text):
    path = tmp_path / "hotrelease.toml"
    path.write_text(text)
    return path


def test_good_config_loads_with_typed_values(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.plugin.name == "greeter" and cfg.plugin.kind == "python"
    assert cfg.trust.threshold == 2
    assert cfg.trust.release_keys[0] == tmp_path / "keys/a.pub"
    assert cfg.build.output_dir == tmp_path / "dist"


@pytest.mark.parametrize("text, where, expected", [
    (GOOD.replace('kind = "python"', 'kind = "python"\ncolour = "red"'),
     "plugin -> colour", "unknown key"),
    (GOOD.replace("threshold = 2", 'threshold = "2"'),
     "trust -> threshold", "expected an integer, got string"),
    (GOOD.replace("threshold = 2", "threshold = 3"), "trust -> threshold", "only 2"),
    (GOOD.replace('name = "greeter"\n', ""), "plugin -> name", "missing required key"),
    (GOOD.replace('kind = "python"', 'kind = "rust"'), "plugin -> kind", "expected one of"),
    (GOOD.replace('name = "greeter"', 'name = "../evil"'), "plugin -> name", "invalid"),
    (GOOD.replace('commands = ["python3 build.py --version {version} --out {out}"]',
                  "commands = [1]"), "build -> commands[0]", "expected a string"),
    (GOOD + "\n[surprise]\nx = 1\n", "surprise", "unknown key"),
    (GOOD + "\n[[plugin.dependencies]]\nname = \"economy\"\n",
     "plugin -> dependencies[0] -> range", "missing required key"),
])
def test_bad_config_names_file_and_key_path(tmp_path, text, where, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert where in message and expected in message


def test_invalid_toml_is_reported_with_position(tmp_path):
    path = write(tmp_path, "[plugin\nname = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_config_check_command(cli, tmp_path):
    path = write(tmp_path, GOOD)
    ok = cli("config", "check", path)
    assert ok.code == EXIT_OK and "OK" in ok.stdout
    bad = write(tmp_path, GOOD.replace("threshold = 2", "treshold = 2"))
    result = cli("config", "check", bad)
    assert result.code == EXIT_USAGE
    assert result.error_line == (f"hotrelease: error: {bad}: trust -> treshold: unknown key")
    assert "Traceback" not in result.stderr


def test_debug_flag_shows_traceback(cli, tmp_path):
    bad = write(tmp_path, "nonsense")
    result = cli("--debug", "config", "check", bad)
    assert result.code == EXIT_USAGE and "Traceback" in result.stderr


def test_config_is_found_in_parent_directories(tmp_path):
    write(tmp_path, GOOD)
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    assert load_config(start=nested).path == tmp_path / "hotrelease.toml"


def test_missing_config_is_a_usage_error(cli, tmp_path):
    result = cli("build", "--version", "1.0.0", cwd=tmp_path)
    assert result.code == EXIT_USAGE and "hotrelease.toml" in result.error_line
