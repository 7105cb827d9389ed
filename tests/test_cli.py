"""The console script: every subcommand is listed, has --help, and library errors become one clean line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mmduplex import cli


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in [*cli.LIGHTNING_SUBCOMMANDS, *cli.COMMANDS]:
        assert name in out, f"{name} missing from mmduplex --help"


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_each_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    assert "usage: mmduplex" in capsys.readouterr().out


def test_console_script_runs_as_module():
    proc = subprocess.run([sys.executable, "-m", "mmduplex", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "fit" in proc.stdout
