"""`oomdoctor run script.py` behaves for the script exactly as `python script.py` does."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, run_cli, run_python

PROBE = textwrap.dedent(
    """
    import json, os, sys
    print(json.dumps({
        "argv": sys.argv,
        "name": __name__,
        "path0": sys.path[0],
        "cwd": os.getcwd(),
        "file": __file__,
        "main_is_module": sys.modules["__main__"].__dict__ is globals(),
    }))
    """
)


def _script(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def test_argv_name_path_cwd_and_stdout_match_python(tmp_path: Path):
    # GIVEN a script that prints what it sees of its environment, in a folder of its own
    sub = tmp_path / "proj"
    sub.mkdir()
    _script(sub, "probe.py", PROBE)
    # WHEN it runs under python and under oomdoctor, from the same cwd with the same arguments
    plain = run_python("proj/probe.py", "--lr", "0.1", "pos", cwd=tmp_path)
    doctor = run_cli("run", "--quiet", "proj/probe.py", "--lr", "0.1", "pos", cwd=tmp_path)
    # THEN stdout (argv, __name__, sys.path[0], cwd, __main__) and the exit code are identical
    assert doctor.returncode == plain.returncode == 0
    assert doctor.stdout == plain.stdout
    seen = json.loads(doctor.stdout)
    assert seen["argv"] == ["proj/probe.py", "--lr", "0.1", "pos"]
    assert seen["name"] == "__main__" and seen["main_is_module"]


def test_options_after_the_script_belong_to_the_script(tmp_path: Path):
    _script(tmp_path, "probe.py", PROBE)
    doctor = run_cli("run", "--quiet", "probe.py", "--json", "x", "--quiet", cwd=tmp_path)
    assert json.loads(doctor.stdout)["argv"] == ["probe.py", "--json", "x", "--quiet"]


def test_module_mode_matches_python_dash_m(tmp_path: Path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    _script(pkg, "probe.py", PROBE)
    plain = run_python("-m", "pkg.probe", "a", cwd=tmp_path)
    doctor = run_cli("run", "--quiet", "-m", "pkg.probe", "a", cwd=tmp_path)
    assert doctor.returncode == plain.returncode == 0
    assert json.loads(doctor.stdout) == json.loads(plain.stdout)


@pytest.mark.parametrize(
    "body, code",
    [
        ("import sys; sys.exit(3)", 3),
        ("import sys; sys.exit(0)", 0),
        ("import sys; sys.exit()", 0),
        ("import sys; sys.exit('fatal: bad config')", 1),
        ("raise ValueError('broken')", 1),
        ("print('done')", 0),
    ],
)
def test_exit_codes_match_python(tmp_path: Path, body: str, code: int):
    _script(tmp_path, "s.py", body)
    plain = run_python("s.py", cwd=tmp_path)
    doctor = run_cli("run", "s.py", cwd=tmp_path)
    assert plain.returncode == doctor.returncode == code
    assert doctor.stdout == plain.stdout


def test_uncaught_exception_prints_python_traceback_and_still_reports(tmp_path: Path):
    _script(tmp_path, "boom.py", """
        import torch
        x = torch.ones(1000)
        def fail():
            raise ValueError("broken input")
        fail()
    """)
    plain = run_python("boom.py", cwd=tmp_path)
    doctor = run_cli("run", "--json", "r.json", "boom.py", cwd=tmp_path)
    assert doctor.returncode == 1
    # The traceback is python's, without oomdoctor's or runpy's frames on top.
    assert plain.stderr.strip() in doctor.stderr
    assert "runpy" not in doctor.stderr and "oomdoctor/runner.py" not in doctor.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["exit"] == {"code": 1, "exception": "ValueError: broken input"}


def test_ctrl_c_reports_and_dies_of_sigint_like_python(tmp_path: Path):
    script = _script(tmp_path, "loop.py", """
        import time, torch
        print("ready", flush=True)
        x = torch.zeros(10)
        while True:
            time.sleep(0.05)
    """)
    proc = subprocess.Popen([sys.executable, "-m", "oomdoctor", "run", "--json", "r.json", str(script)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGINT  # as `python loop.py` interrupted by Ctrl-C
    assert "KeyboardInterrupt" in err
    ended = json.loads((tmp_path / "r.json").read_text())["exit"]
    assert ended["exception"].startswith("KeyboardInterrupt")
    assert ended["code"] == 130  # what the shell sees: 128 + SIGINT


def _traceback(stderr: str) -> str:
    """The traceback python printed: from its first line to the exception line before the report."""
    start = stderr.index("Traceback (most recent call last):")
    end = stderr.find("╭─ oomdoctor", start)
    return stderr[start:end if end >= 0 else None].strip()


@pytest.mark.parametrize("body", [
    # an op that fails while the ledger watches every op (--exact): torch's dispatch frames
    """
    import torch
    def train():
        return torch.ones(3) @ torch.ones(4)
    train()
    """,
    # an exception through a decorated step joined to the run, raised from another one
    """
    import oomdoctor, torch
    @oomdoctor.watch
    def step(i):
        torch.ones(2, 2).requires_grad_().sum().backward()
        if i == 1:
            try:
                {}["missing"]
            except KeyError as exc:
                raise ValueError("bad step") from exc
    for i in range(2):
        step(i)
    """,
])
def test_tracebacks_are_the_ones_python_prints(tmp_path: Path, body: str):
    _script(tmp_path, "fails.py", body)
    plain = run_python("fails.py", cwd=tmp_path)
    doctor = run_cli("run", "--exact", "fails.py", cwd=tmp_path)
    assert doctor.returncode == plain.returncode == 1
    def lines(text: str) -> list[str]:  # without the ^~~ markers under a line, which python may place differently
        return [line for line in _traceback(text).splitlines() if not set(line.strip()) <= set("^~")]

    assert lines(doctor.stderr) == lines(plain.stderr)
    shown = "\n".join(lines(doctor.stderr))
    assert "oomdoctor" not in shown and "torch/_" not in shown


def test_an_exception_whose_str_raises_is_shown_like_python_and_reported(tmp_path: Path):
    _script(tmp_path, "weird.py", """
        class Weird(Exception):
            def __str__(self):
                raise RuntimeError("no str")
        raise Weird()
    """)
    plain = run_python("weird.py", cwd=tmp_path)
    doctor = run_cli("run", "--json", "r.json", "weird.py", cwd=tmp_path)
    assert doctor.returncode == plain.returncode == 1
    assert _traceback(doctor.stderr) == plain.stderr.strip()
    assert json.loads((tmp_path / "r.json").read_text())["exit"] == {
        "code": 1, "exception": "Weird: <exception str() failed>"}


LOADER = """
    import sys, torch
    from torch.utils.data import DataLoader, Dataset

    class Digits(Dataset):  # defined in __main__: spawned workers must import it from the script
        def __len__(self):
            return 128

        def __getitem__(self, i):
            return torch.randn(16, generator=torch.Generator().manual_seed(i)), i % 4

    def main(context):
        torch.manual_seed(0)
        model = torch.nn.Linear(16, 4)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = DataLoader(Digits(), batch_size=32, num_workers=2, multiprocessing_context=context)
        for epoch in range(2):
            for x, y in loader:
                loss = torch.nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            print(context, epoch, round(loss.item(), 6))

    if __name__ == "__main__":
        main(sys.argv[1])
"""


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_run_as_under_python(tmp_path: Path, context: str):
    # GIVEN a script whose DataLoader feeds batches from 2 worker processes, forked or spawned
    # (spawned workers re-import the script as __mp_main__ to find its Dataset class)
    _script(tmp_path, "train.py", LOADER)
    # WHEN it runs under python and under oomdoctor
    plain = run_python("train.py", context, cwd=tmp_path, timeout=180)
    doctor = run_cli("run", "--quiet", "--json", "r.json", "train.py", context, cwd=tmp_path, timeout=180)
    # THEN the script's output and exit code are python's, and the main process's steps are all there
    assert plain.returncode == doctor.returncode == 0, doctor.stderr
    assert doctor.stdout == plain.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["steps_total"] == 8 and report["exit"]["code"] == 0
    assert "Traceback" not in doctor.stderr
