"""`oomdoctor batch`: real runs of the command, each trial a real `oomdoctor run` subprocess.

The device is the CPU with a simulated capacity (`--capacity`): the ledger raises a real
`torch.OutOfMemoryError` past it, as a GPU of that size would. CUDA_VISIBLE_DEVICES="" keeps it
the CPU on a machine with a GPU too.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, RECIPES, run_cli

RECIPE = str(RECIPES / "batch_mlp.py")
# A width-128 MLP in 1.5 MB: the largest batch lies where memory is a straight line, in reach of
# two probes and one confirmation.
SEARCH = ("batch", "--flag", "--batch-size", "--capacity", "1.5MB")
CPU = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}  # one thread: runs side by side do not crawl


def _error_line(result, code: int) -> str:
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("oomdoctor: error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_finds_the_exact_largest_batch_size_and_one_with_headroom(tmp_path):
    result = run_cli(*SEARCH, "--json", "batch.json", RECIPE, "--width", "128", cwd=tmp_path, env=CPU)
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "batch.json").read_text())
    best, recommended = data["max_batch_size"], data["recommended_batch_size"]

    # THEN the largest size fits, measured, and the next one does not: measured or predicted,
    # and a prediction holds when the script runs at that size
    trials = {t["batch_size"]: t for t in data["trials"]}
    assert trials[best]["fits"] and trials[best]["source"] == "measured"
    assert not trials[best + 1]["fits"]
    if trials[best + 1]["source"] == "predicted":
        check = run_cli("run", "--quiet", "--steps", "2", "--capacity", "1.5MB", RECIPE, "--width", "128",
                        "--batch-size", str(best + 1), cwd=tmp_path, env=CPU)
        assert check.returncode == 1 and "OutOfMemoryError" in check.stderr
    assert data["measured_trials"] <= 3  # kinked, but the moments show it: two probes and the answer

    # AND the recommendation keeps 10 % of the capacity free
    assert data["schema"] == "oomdoctor.batch/1" and data["capacity_bytes"] == 1_500_000
    assert recommended < best
    assert data["prediction"]["model"] in ("linear", "quadratic") and data["prediction"]["per_sample_bytes"] > 0

    # AND since the script's own batch size (its argparse default, 1024) does not fit, the
    # gradient accumulation that keeps an effective batch of 1024
    assert data["current_batch_size"] == 1024
    acc = data["accumulation"]
    assert acc["micro_batch_size"] <= recommended and acc["micro_batch_size"] * acc["steps"] == 1024

    out = result.stdout
    assert f"Largest batch size that fits: {best} ({best} fits, {best + 1} does not" in out
    assert f"Recommended: {recommended} (peak" in out
    assert f"run it with --batch-size {acc['micro_batch_size']} and accumulate gradients over {acc['steps']}" in out
    for size in trials:
        assert f"│ {size:>10} │" in out  # one table row per trial
    assert "oomdoctor: batch size 1: fits" in result.stderr  # progress while it runs

    # AND every measured size that fits has its speed, from its last (warm) step
    assert "samples/s" in out
    for t in data["trials"]:
        if t["source"] == "measured" and t["fits"]:
            assert t["samples_per_second"] == pytest.approx(t["batch_size"] / t["step_seconds"], rel=1e-3)
    assert "fastest" in data


# Scripts that fail in the ways a search must not mistake for "does not fit".
SCRIPTS = {
    "no_flag.py": """
        import argparse
        parser = argparse.ArgumentParser()
        parser.add_argument("--bs", type=int, default=8)
        parser.parse_args()
    """,
    "broken.py": """
        import argparse
        parser = argparse.ArgumentParser()
        parser.add_argument("--batch-size", type=int)
        args = parser.parse_args()
        raise ValueError(f"cannot shard {args.batch_size} samples")
    """,
    "own_parser.py": """
        import sys
        if "--batch-size" in sys.argv:
            print("usage: own_parser.py [--bs N]", file=sys.stderr)
            print("own_parser.py: error: unrecognized arguments: --batch-size", file=sys.stderr)
            sys.exit(2)
    """,
    "no_step.py": """
        import argparse
        parser = argparse.ArgumentParser()
        parser.add_argument("--batch-size", type=int)
        print(parser.parse_args().batch_size)
    """,
}
EDGE_CASES = {
    "nothing_fits": ("batch", "--flag", "--batch-size", "--capacity", "512KB", RECIPE, "--width", "128"),
    "all_fit": ("batch", "--flag", "--batch-size", "--capacity", "1GiB", "--min", "4", "--max", "4", RECIPE,
                "--width", "128"),
    "no_flag": (*SEARCH, "no_flag.py"),
    "own_parser": (*SEARCH, "own_parser.py"),
    "bad_card": ("batch", "--flag", "--batch-size", "--gpu", "B200-1TB", RECIPE),
    "card_and_capacity": ("batch", "--flag", "--batch-size", "--gpu", "T4-16GB", "--capacity", "1GiB", RECIPE),
    "all_fit_quiet": ("batch", "--flag", "--batch-size", "--capacity", "1GiB", "--min", "4", "--max", "4", "--quiet",
                      RECIPE, "--width", "128"),
    "broken": (*SEARCH, "broken.py"),
    "no_step": (*SEARCH, "no_step.py"),
    "one_step": ("batch", "--flag", "--batch-size", "--steps", "1", "--capacity", "1MB", RECIPE),
    "no_capacity": ("batch", "--flag", "--batch-size", RECIPE),
}


@pytest.fixture(scope="module")
def edge(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """The edge cases' `oomdoctor batch` runs, started together: each is mostly process start-up
    (importing torch), so side by side they take about as long as the slowest one."""
    folder = tmp_path_factory.mktemp("batch-edge")
    for name, source in SCRIPTS.items():
        (folder / name).write_text(textwrap.dedent(source))
    env = {**os.environ, "COLUMNS": "100", "PYTHONPATH": str(REPO), **CPU}
    started = {name: subprocess.Popen([sys.executable, "-m", "oomdoctor", *args], cwd=folder, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for name, args in EDGE_CASES.items()}
    done = {}
    for name, process in started.items():
        out, err = process.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done


def test_even_the_smallest_batch_not_fitting_exits_1_with_what_the_model_needs(edge):
    line = _error_line(edge["nothing_fits"], 1)
    assert "even batch size 1 does not fit in 500.00 KiB" in line
    assert "Traceback" not in edge["nothing_fits"].stderr  # an OOM is an answer, not a failure to show


def test_everything_up_to_max_fitting_says_more_may_fit(edge):
    result = edge["all_fit"]
    assert result.returncode == 0, result.stderr
    assert "Every batch size up to --max 4 fits: 4 is the answer here, and more may fit" in result.stdout


def test_a_script_without_the_flag_is_refused_before_any_trial_in_one_line(edge):
    # GIVEN an argparse script whose batch-size option is --bs: its source says so
    line = _error_line(edge["no_flag"], 2)
    assert "no_flag.py does not take --batch-size: its options are --bs" in line
    assert edge["no_flag"].stderr.count("\n") == 1  # no trial ran, no usage text


def test_a_script_that_refuses_the_flag_at_run_time_is_one_line_too(edge):
    # GIVEN a script parsing its own arguments: only running it tells, and it says so in one line
    result = edge["own_parser"]
    line = _error_line(result, 2)
    assert "does not take --batch-size 1: own_parser.py: error: unrecognized arguments: --batch-size" in line
    assert "usage:" not in result.stderr


def test_an_unknown_card_is_one_line_naming_the_known_ones(edge):
    line = _error_line(edge["bad_card"], 2)
    assert "--gpu: unknown card 'B200-1TB'; known: T4-16GB" in line and "A100-40GB" in line and "H200-141GB" in line
    assert "not both" in _error_line(edge["card_and_capacity"], 2)


def test_quiet_prints_no_progress(edge):
    result = edge["all_fit_quiet"]
    assert result.returncode == 0, result.stderr
    assert "oomdoctor: batch size" not in result.stderr and "Every batch size up to --max 4 fits" in result.stdout


def test_a_gpu_you_do_not_have_gets_a_marked_prediction(tmp_path):
    # GIVEN no GPU here (CUDA hidden), a prediction for an A100-40GB, sizes up to 4096
    result = run_cli("batch", "--flag", "--batch-size", "--gpu", "a100 40gb", "--max", "4096", "--json", "g.json",
                     RECIPE, "--width", "128", cwd=tmp_path, env=CPU)
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "g.json").read_text())
    # THEN the card's terms are in the answer, marked predicted and unvalidated, with what they assume
    gpu = data["gpu"]
    assert gpu["name"] == "A100-40GB" and gpu["predicted"] is True and gpu["validated"] is False
    assert gpu["allocator_bytes"] == gpu["memory_bytes"] - gpu["context_bytes"] == data["capacity_bytes"]
    assert any("one process" in a for a in gpu["assumptions"])
    assert "Predicted for A100-40GB, unvalidated" in result.stdout and "CUDA context" in result.stdout
    # AND the peaks are the allocator's reserved bytes: whole 2 MiB segments at least
    measured = [t for t in data["trials"] if t["source"] == "measured"]
    assert all(t["peak_bytes"] % (2 * 1024 * 1024) == 0 for t in measured)
    assert data["max_batch_size"] == 4096 and data["all_fit"]


def test_a_script_error_is_shown_and_never_taken_for_out_of_memory(edge):
    line = _error_line(edge["broken"], 2)
    assert "failed at batch size 1 with ValueError: cannot shard 1 samples" in line
    assert 'raise ValueError(f"cannot shard' in edge["broken"].stderr  # the script's own traceback


def test_a_script_that_never_steps_an_optimizer_is_a_clear_error(edge):
    assert "ended without an optimizer step" in _error_line(edge["no_step"], 2)


def test_one_step_per_trial_is_refused(edge):
    # The optimizer's state appears at its first step: a single step would miss it.
    assert "--steps" in _error_line(edge["one_step"], 2)


def test_without_a_gpu_a_capacity_is_required(edge):
    assert "give --capacity" in _error_line(edge["no_capacity"], 2)


def test_help_answers_without_importing_torch():
    code = ("import sys; from oomdoctor.cli import main\n"
            "try:\n    main(['batch', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **CPU})
    assert done.returncode == 0, done.stderr
    assert "--gpu CARD" in done.stdout and done.stdout.strip().endswith("False")


def test_for_a_card_a_size_fits_when_the_bytes_the_allocator_would_reserve_do(tmp_path, monkeypatch):
    # GIVEN a budget of 16 MiB for the caching allocator, and a size whose tensors take ~5 MB
    from oomdoctor.batch.script import ScriptTrials

    monkeypatch.chdir(tmp_path)
    budget = 16 * 2**20
    trials = ScriptTrials(RECIPE, ["--width", "128"], "--batch-size", 2, budget, gpu_budget=budget)
    trial = trials(1000)
    report = trials.reports[1000]
    # THEN the CPU run went through, but the allocator model reserves whole segments past the
    # budget: on the card it would not fit
    assert report["exit"]["code"] == 0 and report["peak_bytes"] < budget
    assert not trial.fits and trial.peak_bytes > budget and trial.peak_bytes % (2 * 2**20) == 0
    assert trial.peak_bytes == report["aggregates"]["predicted_cuda_reserved_peak_bytes"]


def test_past_this_machines_memory_the_card_gets_the_fitted_models_size():
    # GIVEN trials held to 1 GiB by this machine's memory, for a card whose allocator has ~14 GiB,
    # on a workload of 100 MiB + 1 MiB a sample
    from oomdoctor.batch.search import Trial, search
    from oomdoctor.cli.batch import _beyond_host
    from oomdoctor.gpu.cards import card

    t4, mib = card("T4-16GB"), 2**20

    def peak(b: int) -> int:
        return 100 * mib + mib * b

    host = 2**30
    result = search(lambda b: Trial(b, peak(b) <= host, peak(b)), capacity=host)
    # THEN the measured answer is this machine's, and the card's is the model's, extrapolated
    assert result.max_batch_size == 924
    assert _beyond_host(t4, result) == (t4.allocator_bytes - 100 * mib) // mib
