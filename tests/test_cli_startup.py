"""The commands that run no script start without torch; `--version`, `-h`, and help that reads
whole at 80 columns."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import oomdoctor
from conftest import REPO, run_cli

OOM = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
       "79.15 GiB of which 1.06 GiB is free. Of the allocated memory 75.52 GiB is allocated by PyTorch, and "
       "1.84 GiB is reserved by PyTorch but unallocated.")


def _modules_after(args: list[str], cwd: Path) -> tuple[int, bool]:
    """Run the CLI's main() on `args` in a fresh interpreter: (exit code, was torch imported)."""
    code = textwrap.dedent(f"""
        import sys
        from oomdoctor.cli import main
        try:
            main({args!r})
            code = 0
        except SystemExit as exc:
            code = exc.code
        sys.stdout.flush()
        print("RESULT", code, "torch" in sys.modules, file=sys.stderr)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    _, exit_code, imported = done.stderr.strip().splitlines()[-1].split()
    return int(exit_code), imported == "True"


def test_commands_that_run_no_script_do_not_import_torch(tmp_path: Path):
    # GIVEN a script with a lint finding, a saved report and an OOM message
    (tmp_path / "train.py").write_text("total = 0\nfor x in data:\n    loss = model(x)\n    loss.backward()\n"
                                       "    total += loss\n")
    with oomdoctor.track(quiet=True, json=str(tmp_path / "r.json")) as session:
        torch.nn.Linear(4, 4)(torch.ones(2, 4)).sum().backward()
        session.step()
    # WHEN each command runs in a fresh interpreter
    # THEN it answers as usual, and torch was never imported
    for args, expected in [(["--help"], 0), (["-h"], 0), (["--version"], 0), (["run", "--help"], 0),
                           (["lint", "missing.py"], 2), (["lint", "train.py"], 1), (["explain", OOM], 0),
                           (["report", "r.json"], 0)]:
        code, imported = _modules_after(args, tmp_path)
        assert (code, imported) == (expected, False), args


def test_version_prints_the_package_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"oomdoctor {oomdoctor.__version__}"


def test_dash_h_is_help_on_every_level():
    assert run_cli("-h").stdout == run_cli("--help").stdout != ""
    assert "--capacity" in run_cli("run", "-h").stdout


def _commands() -> dict:
    import typer

    from oomdoctor.cli import app

    return typer.main.get_command(app).commands


@pytest.mark.parametrize("name", sorted(_commands()))
def test_help_at_80_columns_is_whole_and_wrapped_at_word_boundaries(name: str):
    # GIVEN an 80-column terminal
    result = run_cli(name, "--help", env={"COLUMNS": "80"})
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    # THEN no line is wider than the terminal, and nothing is cut short with an ellipsis
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert "…" not in result.stdout
    # AND every option's help is there whole (modulo wrapping)
    flat = " ".join(result.stdout.split())
    for param in _commands()[name].params:
        if getattr(param, "help", None):
            assert " ".join(param.help.split()) in flat, param.help
    # AND the description's paragraphs are filled: no line ends where the next word would still fit
    for paragraph in result.stdout.split("Options:")[0].split("\n\n")[1:]:
        if paragraph.strip().endswith(":") or paragraph.lstrip().startswith("Arguments:"):
            continue  # a section of its own, not the description
        rows = [line.strip() for line in paragraph.splitlines() if line.startswith("  ") and line.strip()]
        for row, following in zip(rows, rows[1:]):
            assert len(row) + 1 + len(following.split()[0]) > 60, (row, following)


def test_command_list_shows_each_first_sentence_whole():
    result = run_cli("--help", env={"COLUMNS": "80"})
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    flat = " ".join(result.stdout.split())
    for name, command in _commands().items():
        first = " ".join(command.help.split("\n\n")[0].split())
        first = first[:first.index(". ") + 1] if ". " in first else first
        assert f"{name} {first}" in flat


@pytest.mark.parametrize("args", [["--bogus"], []])
def test_no_command_or_a_bad_option_is_a_usage_error(args):
    result = run_cli(*args)
    assert result.returncode == 2
    assert "Usage: oomdoctor" in result.stderr or "oomdoctor: error:" in result.stderr
    assert "Traceback" not in result.stderr
