"""`oomdoctor run -m MODULE ARGS...` behaves as `python -m MODULE ARGS...`: the module is found
from the current folder, and everything after its name is its arguments.

The CLI runs here as the installed `oomdoctor` command does, from a launcher file in a folder of
its own: `python -m oomdoctor` would put the current folder on sys.path by itself and hide a bug.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO, run_python

SHOWARGS = textwrap.dedent(
    """
    import json, os, sys
    print(json.dumps({"argv": sys.argv, "name": __name__, "path0": sys.path[0], "cwd": os.getcwd(),
                      "package": __package__}))
    """
)


def _project(tmp_path: Path) -> Path:
    proj = tmp_path / "proj"
    (proj / "mypkg").mkdir(parents=True)
    (proj / "mypkg" / "__init__.py").write_text("")
    (proj / "mypkg" / "showargs.py").write_text(SHOWARGS)
    (proj / "mypkg" / "train.py").write_text(textwrap.dedent("""
        import torch
        from mypkg import showargs  # a sibling, imported through the package
        model = torch.nn.Linear(4, 4)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            model(torch.ones(2, 4)).sum().backward()
            opt.step()
            opt.zero_grad()
        """))
    return proj


def _oomdoctor(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    launcher = cwd.parent / "bin" / "oomdoctor"
    launcher.parent.mkdir(exist_ok=True)
    launcher.write_text("import sys\nfrom oomdoctor.cli import main\nsys.exit(main())\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(launcher), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_a_package_in_the_current_folder_is_found_as_python_finds_it(tmp_path: Path):
    # GIVEN a package in the current folder (not installed, not on PYTHONPATH)
    proj = _project(tmp_path)
    # WHEN `oomdoctor run -m mypkg.train` runs there
    result = _oomdoctor("run", "--json", "r.json", "-m", "mypkg.train", cwd=proj)
    # THEN the module runs (as under python) and its steps are in the report
    assert run_python("-m", "mypkg.train", cwd=proj).returncode == 0
    assert result.returncode == 0, result.stderr
    assert json.loads((proj / "r.json").read_text())["steps_total"] == 3


def test_everything_after_the_module_is_the_modules(tmp_path: Path):
    # GIVEN a module that prints what it sees
    proj = _project(tmp_path)
    args = ["--steps", "3", "--json", "x", "-q", "--", "pos"]
    # WHEN it runs with options of oomdoctor's own names after it, under python and oomdoctor
    plain = run_python("-m", "mypkg.showargs", *args, cwd=proj)
    doctor = _oomdoctor("run", "--quiet", "-m", "mypkg.showargs", *args, cwd=proj)
    # THEN it sees the same argv, __name__, sys.path[0] (the current folder), cwd and package
    assert doctor.returncode == plain.returncode == 0, doctor.stderr
    assert json.loads(doctor.stdout) == json.loads(plain.stdout)
    assert json.loads(doctor.stdout)["argv"][1:] == args
    assert json.loads(doctor.stdout)["path0"] == str(proj)
    assert not (proj / "x").exists()  # --json x was the module's, not a report path


def test_dash_m_glued_to_its_module_as_python_allows(tmp_path: Path):
    proj = _project(tmp_path)
    plain = run_python("-mmypkg.showargs", "a", cwd=proj)
    doctor = _oomdoctor("run", "-q", "-mmypkg.showargs", "a", cwd=proj)
    assert json.loads(doctor.stdout) == json.loads(plain.stdout)


def test_an_unknown_module_is_one_line_and_runs_nothing(tmp_path: Path):
    proj = _project(tmp_path)
    (proj / "mypkg" / "__init__.py").write_text("open('imported', 'w').close()\n")
    result = _oomdoctor("run", "-m", "mypkg.nope", cwd=proj)
    assert result.returncode == 2
    assert result.stderr.strip() == "oomdoctor: error: no module named 'mypkg.nope'"
    assert not (proj / "imported").exists()  # the package's __init__ did not run outside the session


def test_a_package_runs_its_main_and_one_without_is_one_line(tmp_path: Path):
    proj = _project(tmp_path)
    result = _oomdoctor("run", "-m", "mypkg", cwd=proj)
    assert result.returncode == 2
    assert result.stderr.startswith("oomdoctor: error: no module named 'mypkg.__main__'")
    (proj / "mypkg" / "__main__.py").write_text(SHOWARGS)
    plain = run_python("-m", "mypkg", "x", cwd=proj)
    doctor = _oomdoctor("run", "-q", "-m", "mypkg", "x", cwd=proj)
    assert json.loads(doctor.stdout) == json.loads(plain.stdout)
