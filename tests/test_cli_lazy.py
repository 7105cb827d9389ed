"""``mmduplex --help`` and every command's ``--help`` import no torch, torchvision or PyAV: a command's heavy
modules load only when it runs. Each check runs in a fresh interpreter and inspects ``sys.modules`` afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmduplex.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "av", "decord", "lightning", "transformers", "open_clip")

_PROBE = """
import json, runpy, sys
argv, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
try:
    if argv[0] == "-m":
        sys.argv = ["mmduplex", *argv[1:]]
        runpy.run_module("mmduplex", run_name="__main__")
    else:
        from mmduplex.cli import main
        main(argv)
except SystemExit:
    pass
print(json.dumps(sorted(name for name in heavy if name in sys.modules)), file=sys.stderr)
"""


def _heavy_modules_after(argv: list[str]) -> tuple[list[str], str]:
    """Run ``argv`` (``["-m", ...]``: ``python -m mmduplex``) in a new interpreter: heavy modules loaded, stdout."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(argv), json.dumps(HEAVY)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stderr.strip().splitlines()[-1]), done.stdout


def test_python_m_mmduplex_help_imports_no_torch() -> None:
    loaded, out = _heavy_modules_after(["-m", "--help"])
    assert loaded == []
    for name in COMMANDS:
        assert name in out  # every command is listed with its help


def test_build_parser_imports_no_torch() -> None:
    loaded, _ = _heavy_modules_after(["--help"])
    assert loaded == []


@pytest.mark.parametrize(
    "argv", [[name, "--help"] for name in COMMANDS] + [["eval", "longvideobench", "--help"]], ids=" ".join
)
def test_command_help_imports_no_torch(argv: list[str]) -> None:
    loaded, out = _heavy_modules_after(argv)
    assert loaded == [], f"mmduplex {' '.join(argv)} imported {loaded}"
    assert "usage: mmduplex" in out


def test_flags_are_added_when_the_command_is_used() -> None:
    """``mmduplex eval TASK ...`` hands the rest of the line to the task's own (jsonargparse) parser."""
    from mmduplex.commands.eval import parse_settings
    from mmduplex.errors import InputError

    parser = build_parser()
    argv = ["--data-root", "d", "--predictions", "p.jsonl"]
    args = parser.parse_args(["eval", "longvideobench", *argv])
    assert (args.command, args.task, args.settings) == ("eval", "longvideobench", argv)
    settings = parse_settings(args.task, args.settings)
    assert (settings["data_root"], settings["predictions"], settings["frames"]) == ("d", "p.jsonl", None)
    with pytest.raises(InputError, match="no-such-flag"):
        parse_settings("longvideobench", ["--no-such-flag"])
