"""The fusion command: help text, one-line errors, demo without a run, validate."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from fusion.cli import cli


def _fusion(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fusion.cli", *args], check=False, capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("command", ["run", "validate", "demo"])
def test_subcommand_help_lists_options(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output
    if command == "run":
        for option in ("--out", "--resume", "--overwrite", "--no-report"):
            assert option in result.output


def test_top_level_help_lists_subcommands():
    result = CliRunner().invoke(cli, ["--help"])
    for command in ("run", "validate", "demo"):
        assert command in result.output


def test_bad_config_is_one_line_error(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("name: x\ntarget: {kind: binary, column: y}\nmodalities: {}\nn_trails: 3\n")
    result = _fusion("run", str(config))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "unknown key 'n_trails'" in result.stderr


def test_missing_config_file(tmp_path):
    result = _fusion("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "config file not found" in result.stderr


def test_demo_without_run_then_validate(tmp_path):
    result = _fusion("demo", str(tmp_path / "demo"), "--no-run", "--subjects", "30")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "demo" / "config.yaml").is_file()
    checked = _fusion("validate", str(tmp_path / "demo" / "config.yaml"))
    assert checked.returncode == 0, checked.stderr
    assert "subjects with a target: 30" in checked.stdout
    assert "no errors found" in checked.stdout
