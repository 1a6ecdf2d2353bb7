"""Every recipe under `oomdoctor run --json`: the runtime finds what each buggy recipe marks.

A buggy recipe marks its offending lines with `# oomdoctor: <kind>`; the run must report exactly
those (kind, line) pairs among retained-graph, missing-no-grad and memory-growth, and the fixed
twins and the clean recipes (gradient accumulation, a GAN, evaluation under no_grad, a warm-up
cache) none of those kinds. The recipes run two at a time with one intra-op thread each (two
cores here); the set takes about 20 s on an idle machine, hence `slow`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import RECIPES, REPO
from test_lint import BUGGY_RECIPES, CLEAN_RECIPES, LINT_KINDS, marked

NAMES = BUGGY_RECIPES + CLEAN_RECIPES


def _run(name: str, folder: Path) -> tuple[subprocess.CompletedProcess, dict | None]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "100"}
    out = folder / f"{name}.json"
    result = subprocess.run([sys.executable, "-m", "oomdoctor", "run", "--quiet", "--json", str(out),
                             str(RECIPES / f"{name}.py")], env=env, capture_output=True, text=True, timeout=180)
    return result, json.loads(out.read_text()) if out.exists() else None


@pytest.fixture(scope="module")
def reports() -> dict[str, tuple[subprocess.CompletedProcess, dict | None]]:
    with tempfile.TemporaryDirectory() as folder, ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(NAMES, pool.map(lambda name: _run(name, Path(folder)), NAMES)))


def _found(report: dict) -> set[tuple[str, int]]:
    return {(f["kind"], f["location"]["line"]) for f in report["findings"] if f["kind"] in LINT_KINDS}


@pytest.mark.slow
@pytest.mark.parametrize("name", BUGGY_RECIPES)
def test_buggy_recipe_is_diagnosed_at_its_marked_lines(reports, name):
    result, report = reports[name]
    assert result.returncode == 0 and report is not None, result.stderr
    assert _found(report) == marked((RECIPES / f"{name}.py").read_text())
    for finding in report["findings"]:
        assert finding["bytes"] and finding["remedies"], finding  # what is at stake, and the fix


@pytest.mark.slow
@pytest.mark.parametrize("name", CLEAN_RECIPES)
def test_fixed_and_clean_recipes_get_no_diagnosis(reports, name):
    result, report = reports[name]
    assert result.returncode == 0 and report is not None, result.stderr
    assert _found(report) == set()
