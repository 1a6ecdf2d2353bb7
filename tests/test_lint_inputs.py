"""`oomdoctor lint` on hostile or odd inputs: bounded time and memory, one line, the right exit code.

Each test runs the real command in a subprocess with a timeout: a read without limit or a FIFO
that blocks shows as a timeout, not as a slow test.
"""
from __future__ import annotations

import json
import os

import pytest

from conftest import run_cli
from oomdoctor.lint import MAX_BYTES

BUGGY = ("import torch\nfrom torch import nn\nmodel = nn.Linear(8, 2)\ncriterion = nn.CrossEntropyLoss()\n"
         "total = 0\nfor x, y in loader:\n    loss = criterion(model(x), y)\n    loss.backward()\n"
         "    total += loss\n")


def lint(*args: str, cwd) -> tuple[int, str, str]:
    result = run_cli("lint", *args, cwd=cwd, timeout=60)
    assert "Traceback" not in result.stderr
    return result.returncode, result.stdout, result.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_given_alone_is_one_error_line_and_exit_two(tmp_path):
    # GIVEN a FIFO nobody writes to WHEN linted THEN lint does not wait for a writer
    os.mkfifo(tmp_path / "pipe.py")
    code, out, err = lint("pipe.py", cwd=tmp_path)
    assert (code, out, err) == (2, "", "oomdoctor: error: pipe.py is not a regular file\n")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_or_a_device_link_in_a_folder_is_passed_over_and_the_rest_is_checked(tmp_path):
    os.mkfifo(tmp_path / "pipe.py")
    if os.path.exists("/dev/zero"):
        (tmp_path / "zero.py").symlink_to("/dev/zero")
    (tmp_path / "train.py").write_text(BUGGY)
    code, out, err = lint(".", cwd=tmp_path)
    assert code == 1 and err == ""
    assert out.startswith("train.py:9: retained-graph") and out.endswith("1 finding in 1 file (1 checked)\n")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_device_is_not_read(tmp_path):
    (tmp_path / "train.py").write_text(BUGGY)
    code, out, err = lint("/dev/zero", "train.py", cwd=tmp_path)
    assert code == 2 and out.startswith("train.py:9: retained-graph")
    assert err == "oomdoctor: error: /dev/zero is not a regular file\n"


def test_a_file_over_the_size_limit_is_skipped_with_a_note_without_reading_it_whole(tmp_path):
    # GIVEN a 64 GiB sparse file and a real script over the limit WHEN linted THEN both are skipped
    # at once, one note each, and the exit code is the other files' (a note is not an error)
    with open(tmp_path / "huge.py", "wb") as handle:
        handle.truncate(64 * 2**30)
    (tmp_path / "generated.py").write_text("x = 1\n" * (MAX_BYTES // 6 + 1))
    (tmp_path / "train.py").write_text(BUGGY)
    code, out, err = lint(".", cwd=tmp_path)
    assert code == 1 and out.endswith("1 finding in 1 file (1 checked)\n")
    limit = f"over lint's {MAX_BYTES // 2**20} MiB limit"
    assert err.splitlines() == [f"oomdoctor: note: skipped generated.py: {MAX_BYTES / 2**20:.1f} MiB, {limit}",
                                f"oomdoctor: note: skipped huge.py: 65536.0 MiB, {limit}"]


def test_expressions_too_deep_for_python_are_one_error_line_each(tmp_path):
    # 100,000 terms: python cannot compile it either; 2,000 terms: python can, lint's walk cannot.
    (tmp_path / "a_deep.py").write_text("x = " + " + ".join(["a"] * 100_000) + "\n")
    (tmp_path / "b_deep.py").write_text("x = " + " + ".join(["a"] * 2_000) + "\n")
    (tmp_path / "c_train.py").write_text(BUGGY)
    code, out, err = lint(".", cwd=tmp_path)
    assert code == 2 and out.startswith("c_train.py:9: retained-graph")
    assert err.splitlines() == ["oomdoctor: error: a_deep.py: code nested too deeply to parse",
                                "oomdoctor: error: b_deep.py: code nested too deeply to analyse"]


def test_json_lists_skipped_files_apart_from_errors(tmp_path):
    with open(tmp_path / "huge.py", "wb") as handle:
        handle.truncate(MAX_BYTES + 1)
    (tmp_path / "train.py").write_text(BUGGY)
    result = run_cli("lint", "--json", ".", cwd=tmp_path, timeout=60)
    data = json.loads(result.stdout)
    assert result.returncode == 1 and data["files_checked"] == 1 and data["errors"] == []
    assert data["skipped"] == [f"skipped huge.py: 4.0 MiB, over lint's {MAX_BYTES // 2**20} MiB limit"]
    assert [f["line"] for f in data["findings"]] == [9]
