"""Where `oomdoctor run` writes its report, what happens when it cannot, and who writes it:
paths are fixed before the script runs, a report that is lost is said last with a non-zero exit,
and a process forked by the script never reports."""
from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import run_cli

TRAIN = """
import os, sys, torch
model = torch.nn.Linear(8, 8)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
def train(steps):
    for _ in range(steps):
        model(torch.ones(4, 8)).sum().backward()
        opt.step()
        opt.zero_grad()
"""


def _script(folder: Path, body: str) -> Path:
    path = folder / "train.py"
    path.write_text(TRAIN + textwrap.dedent(body))
    return path


def test_relative_outputs_do_not_follow_the_scripts_chdir(tmp_path: Path):
    # GIVEN a script that changes folder before it trains
    (tmp_path / "data").mkdir()
    _script(tmp_path, "os.chdir('data')\ntrain(2)\n")
    # WHEN it runs with relative report paths
    result = run_cli("run", "--quiet", "--json", "r.json", "--html", "r.html", "train.py", cwd=tmp_path)
    # THEN the reports are where the user was when they typed the command
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "r.json").exists() and (tmp_path / "r.html").exists()
    assert not (tmp_path / "data" / "r.json").exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("ending, code", [("", 1), ("sys.exit(3)", 3)])
def test_a_report_that_cannot_be_written_is_said_last_and_fails_the_run(tmp_path: Path, ending: str, code: int):
    # GIVEN a script that ends well (or with its own exit code 3), and a JSON path on a full device
    _script(tmp_path, f"train(2)\nprint('trained')\n{ending}\n")
    # WHEN it runs
    result = run_cli("run", "--json", "/dev/full", "train.py", cwd=tmp_path)
    # THEN the script ran, the terminal report is there, and the last line says the file is lost
    assert result.stdout == "trained\n"
    assert "╭─ oomdoctor" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("oomdoctor: error: report not written to /dev/full:"), last
    assert "No space left" in last
    # AND the exit code says so: 1 where the script said 0, its own code where it failed
    assert result.returncode == code


def test_an_unwritable_report_path_fails_before_the_script_runs(tmp_path: Path):
    # GIVEN a report path oomdoctor may not create (a read-only folder; /sys for root, who may write anywhere)
    if os.geteuid() == 0:
        if not os.path.isdir("/sys"):
            pytest.skip("needs /sys")
        target = "/sys/oomdoctor-test-report.json"
    else:
        folder = tmp_path / "readonly"
        folder.mkdir()
        folder.chmod(0o555)
        target = str(folder / "r.json")
    _script(tmp_path, "open('ran', 'w').close()\n")
    # WHEN the run is asked to write there
    result = run_cli("run", "--json", target, "train.py", cwd=tmp_path)
    # THEN one line, exit 2, and the script never ran
    assert result.returncode == 2
    assert result.stderr.startswith(f"oomdoctor: error: cannot write {target}:")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ran").exists() and not os.path.exists(target)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("fork", [
    # a child that runs on through the end of the script
    "pid = os.fork()\nif pid == 0:\n    train(1)\n    sys.exit(0)\nos.waitpid(pid, 0)\n",
    # multiprocessing's fork start method
    "import multiprocessing as mp\np = mp.get_context('fork').Process(target=train, args=(1,))\np.start()\np.join()\n",
])
def test_a_forked_child_does_not_report(tmp_path: Path, fork: str):
    # GIVEN a script that trains 3 steps, then forks a child that trains one more
    _script(tmp_path, f"train(3)\n{fork}")
    # WHEN it runs under oomdoctor with a JSON report
    result = run_cli("run", "--json", "r.json", "train.py", cwd=tmp_path)
    # THEN there is one report, the parent's
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("╭─ oomdoctor") == 1
    assert json.loads((tmp_path / "r.json").read_text())["steps_total"] == 3


def test_ranks_checking_the_same_report_path_at_once_all_pass_and_leave_nothing(tmp_path: Path):
    # GIVEN many processes (the ranks of a torchrun job do this) checking one report path together
    # (a real race: it failed a CI run while the check created and removed the report path itself)
    script = tmp_path / "check.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from oomdoctor.report.output import check_output
        start = float(sys.argv[1])
        while time.time() < start:
            pass
        for _ in range(300):
            check_output({str(tmp_path / 'r.json')!r})
    """))
    import subprocess
    import time

    start = str(time.time() + 1.5)
    # WHEN they all check at the same moment, again and again
    procs = [subprocess.Popen([sys.executable, str(script), start], stderr=subprocess.PIPE, text=True) for _ in range(6)]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    # THEN no check fails, and no file is left where the report will go
    assert [p.returncode for p in procs] == [0] * 6, errors
    assert sorted(os.listdir(tmp_path)) == ["check.py"]
