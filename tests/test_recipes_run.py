"""Every bug recipe and its fixed twin runs under plain `python`, on CPU, and exits 0.

The recipes are what users read and copy: a story that does not run is a broken promise. They run
two at a time with one intra-op thread each (this machine has two cores, and busy cores make
PyTorch's spinning threads crawl); the set takes about 15 s on an idle machine, hence `slow`.
"""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import RECIPES, REPO
from test_lint import BUGGY_RECIPES, CLEAN_RECIPES

NAMES = BUGGY_RECIPES + CLEAN_RECIPES


def _run(name: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(RECIPES / f"{name}.py")], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def runs() -> dict[str, subprocess.CompletedProcess]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(NAMES, pool.map(_run, NAMES)))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_recipe_runs_under_plain_python(runs, name):
    result = runs[name]
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "a recipe prints what it did"
    assert result.stderr == "", result.stderr
