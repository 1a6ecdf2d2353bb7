"""Real, unmodified programs from pytorch/examples, nanoGPT and minGPT, run plainly and under
`oomdoctor run`, compared.

    python benchmarks/real_programs.py --examples /tmp/examples [--nanogpt DIR] [--mingpt DIR]
                                       [--site DIR] [--only mnist,vae]
    python benchmarks/real_programs.py --prepare-site DIR     # benchmark-only packages, see below

`--examples` is a checkout of github.com/pytorch/examples, `--nanogpt` of karpathy/nanoGPT and
`--mingpt` of karpathy/minGPT (none of them part of this repository; programs of a checkout not
given are skipped). Each program runs three times on CPU, with data made here offline (random
MNIST idx files, a small sine-wave file, a random-word corpus, random GPT tokens; dcgan's
`--dataset fake`, imagenet's `--dummy`): plainly,
under `oomdoctor run --json`, and under `oomdoctor run --exact --json`. All three go through the
same small launcher (written into the work folder) that runs the program with `runpy` like python
does and records what the program itself did: optimizer.step() and backward() calls, and the bytes
of every live `nn.Parameter` and module buffer (a gc scan at the first forward and the first
optimizer step), and
stops after N optimizer steps for programs that would run for hours (imagenet, reinforcement
learning). The program's source is untouched. Printed per program: exit codes and stdout equal
(timings masked), steps reported vs done, parameter bytes at the peak vs real, peak default vs
exact, and the whole-process time ratio; then every check that failed.

The programs need torchvision, gymnasium, pillow and matplotlib, which are no dependency of
oomdoctor. `--prepare-site DIR` pip-installs them into DIR (torchvision without its CUDA-linked
ops: a `sitecustomize.py` there defines the two op schemas its import needs), and `--site DIR`
puts DIR on the programs' PYTHONPATH. Programs whose imports fail are listed as skipped.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

LAUNCHER = '''\
"""Run a program like python does; record its optimizer steps, backward calls and parameters."""
import gc, json, os, random, runpy, sys
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
limit, out, script = int(sys.argv[1]), sys.argv[2], os.path.abspath(sys.argv[3])
sys.argv = sys.argv[3:]
sys.path[0] = os.path.dirname(script)
random.seed(0)  # programs that never seed (mnist_forward_forward, vae, regression) print the same twice
torch.manual_seed(0)
seen = {"optimizer_steps": 0, "optimizers": [], "backwards": 0, "param_bytes": 0}
def scan():
    # parameters and the modules' buffers (BatchNorm statistics, causal masks): oomdoctor's
    # "parameters" category is the model's state
    objects = gc.get_objects()
    tensors = [p for p in objects if issubclass(type(p), torch.nn.Parameter)]
    tensors += [b for m in objects if issubclass(type(m), torch.nn.Module)  # not isinstance: weak proxies
                for b in m.buffers(recurse=False) if b is not None]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    seen["param_bytes"] = max(seen["param_bytes"], sum(storages.values()))
def on_forward(module, args):
    handle.remove()
    scan()
handle = torch.nn.modules.module.register_module_forward_pre_hook(on_forward)
def on_step(optimizer, args, kwargs):
    seen["optimizer_steps"] += 1
    if id(optimizer) not in seen["optimizers"]:
        seen["optimizers"].append(id(optimizer))
        scan()
    if limit and seen["optimizer_steps"] >= limit:
        raise SystemExit(0)
register_optimizer_step_post_hook(on_step)
backward = torch.autograd.backward
def counting_backward(*args, **kwargs):
    seen["backwards"] += 1
    return backward(*args, **kwargs)
torch.autograd.backward = counting_backward
try:
    runpy.run_path(script, run_name="__main__")
finally:
    seen["optimizers"] = len(seen["optimizers"])
    with open(out, "w") as f:
        json.dump(seen, f)
'''

MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def write_mnist(root: Path, train: int = 640, test: int = 200) -> None:
    """MNIST-style idx files of random digits, the layout torchvision's MNIST reads (no download)."""
    import numpy as np

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        images, labels = MNIST_FILES[split]
        header = np.array([2051, count, 28, 28], dtype=">i4").tobytes()
        (raw / images).write_bytes(header + rng.integers(0, 256, (count, 28, 28), dtype=np.uint8).tobytes())
        header = np.array([2049, count], dtype=">i4").tobytes()
        (raw / labels).write_bytes(header + rng.integers(0, 10, count, dtype=np.uint8).tobytes())


def write_sine(folder: Path) -> None:
    """traindata.pt as generate_sine_wave.py makes it, 13 waves of 201 points instead of 100 x 1000."""
    import numpy as np
    import torch

    rng = np.random.default_rng(2)
    x = np.arange(201)[None, :] + rng.integers(-80, 80, 13)[:, None]
    torch.save(np.sin(x / 20.0).astype("float64"), folder / "traindata.pt")


def write_corpus(folder: Path) -> None:
    """train/valid/test.txt of random words from a 60-word vocabulary (wikitext-2's layout)."""
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(60)]
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in (("train.txt", 200), ("valid.txt", 40), ("test.txt", 40)):
        text = "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(lines))
        (folder / name).write_text(text + "\n")


@dataclasses.dataclass
class Program:
    name: str
    script: str  # relative to the checkout of `repo`
    args: list[str]
    truth: str  # what one step of this program is: "optimizer", "optimizer/2", "backward", "none"
    needs: tuple[str, ...] = ()
    limit: int = 0  # stop after this many optimizer steps (0: run to the end)
    setup: Callable[[Path], None] | None = None  # makes the data, in the program's working folder
    mask: str = ""  # regex of stdout parts that vary from run to run (timings, unseeded numbers)
    launcher: bool = True  # False: mp.spawn programs, run directly (the launcher records the parent only)
    repo: str = "examples"  # which checkout: examples, nanogpt, mingpt
    importable_root: bool = False  # the checkout's root goes on PYTHONPATH (minGPT's `mingpt` package)


def _mnist_parent(cwd: Path) -> None:
    write_mnist(cwd.parent / "data")


def _mnist_here(cwd: Path) -> None:
    write_mnist(cwd / "data")


def _vae(cwd: Path) -> None:
    write_mnist(cwd.parent / "data")
    (cwd / "results").mkdir(exist_ok=True)


def _nanogpt(cwd: Path) -> None:
    """train.py reads `configurator.py` and `data/<dataset>/` from its working folder."""
    import numpy as np

    folder = cwd / "data" / "rand"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rng.integers(0, 65, 200_000, dtype=np.uint16).tofile(folder / "train.bin")
    rng.integers(0, 65, 20_000, dtype=np.uint16).tofile(folder / "val.bin")
    (folder / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 65}))


def _configurator(checkout: Path, cwd: Path) -> None:
    shutil.copy(checkout / "configurator.py", cwd / "configurator.py")


NANOGPT = ["--device=cpu", "--eval_iters=2", "--log_interval=5", "--block_size=64", "--batch_size=8",
           "--n_layer=2", "--n_head=2", "--n_embd=64", "--max_iters=30", "--lr_decay_iters=30", "--dropout=0.0",
           "--dataset=rand", "--eval_interval=15", "--always_save_checkpoint=False", "--out_dir=out"]

PROGRAMS = [
    Program("mnist", "mnist/main.py", ["--epochs", "2", "--no-accel", "--test-batch-size", "100"],
            "optimizer", ("torchvision",), setup=_mnist_parent),
    Program("vae", "vae/main.py", ["--epochs", "2", "--batch-size", "64", "--no-accel"],
            "optimizer", ("torchvision",), setup=_vae),
    Program("dcgan", "dcgan/main.py", ["--dataset", "fake", "--batchSize", "200", "--ngf", "8", "--ndf", "8",
                                       "--niter", "1", "--workers", "0", "--manualSeed", "1", "--outf", "out"],
            "optimizer/2", ("torchvision",)),
    Program("imagenet resnet18 --dummy", "imagenet/main.py",
            ["--dummy", "-a", "resnet18", "-b", "4", "-j", "0", "--epochs", "1", "--no-accel", "--seed", "1",
             "--print-freq", "1"], "optimizer", ("torchvision",), limit=4,
            mask=r"(Time|Data)\s+[\d.]+ \(\s*[\d.]+\)"),
    Program("reinforce", "reinforcement_learning/reinforce.py", [], "optimizer", ("gymnasium",), limit=100),
    Program("actor_critic", "reinforcement_learning/actor_critic.py", [], "optimizer", ("gymnasium",), limit=100),
    Program("mnist_forward_forward", "mnist_forward_forward/main.py",
            ["--epochs", "20", "--train_size", "320", "--test_size", "100", "--no_accel"],
            "optimizer", ("torchvision",), setup=_mnist_here),
    Program("time_sequence_prediction", "time_sequence_prediction/train.py", ["--steps", "2"],
            "optimizer", ("matplotlib",), setup=write_sine),
    Program("word_language_model", "word_language_model/main.py",
            ["--data", "corpus", "--epochs", "1", "--batch_size", "10", "--bptt", "20", "--emsize", "32",
             "--nhid", "32", "--log-interval", "4", "--save", "model.pt"],
            "backward", setup=lambda cwd: write_corpus(cwd / "corpus"),
            mask=r"ms/batch\s+[\d.]+|time:\s+[\d.]+s"),
    Program("word_language_model generate.py", "word_language_model/generate.py",
            ["--data", "corpus", "--checkpoint", "model.pt", "--words", "60", "--log-interval", "20"], "none"),
    Program("regression", "regression/main.py", [], "backward"),
    Program("distributed/rpc/rnn (mp.spawn)", "distributed/rpc/rnn/main.py", [], "none", launcher=False),
    # nanoGPT's defaults: 40 micro-batches of gradient accumulation per optimizer step
    Program("nanoGPT", "train.py", NANOGPT + ["--compile=False"], "optimizer", repo="nanogpt",
            setup=_nanogpt, mask=r"time [\d.]+ms, mfu -?[\d.]+%"),
    Program("nanoGPT --compile=True", "train.py", NANOGPT + ["--compile=True", "--gradient_accumulation_steps=4"],
            "optimizer", repo="nanogpt", setup=_nanogpt, mask=r"time [\d.]+ms, mfu -?[\d.]+%"),
    # minGPT's trainer: a DataLoader with 4 forked workers; an evaluation under no_grad at iteration 0
    Program("minGPT adder", "projects/adder/adder.py",
            ["--trainer.max_iters=120", "--trainer.device=cpu", "--model.model_type=gpt-nano"], "optimizer",
            repo="mingpt", importable_root=True, mask=r"iter_dt [\d.]+ms"),
]


@dataclasses.dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float
    seen: dict[str, Any]
    report: dict[str, Any] | None


def run_one(program: Program, checkout: Path, cwd: Path, env: dict[str, str], tool: list[str]) -> Run:
    script = str(checkout / program.script)
    if program.importable_root:
        env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(checkout), env.get("PYTHONPATH")])))
    seen_path, report_path = cwd / "seen.json", cwd / "report.json"
    for path in (seen_path, report_path):
        path.unlink(missing_ok=True)
    if program.launcher:
        target = [str(cwd.parent / "launch.py"), str(program.limit), str(seen_path), script]
    else:
        target = [script]
    if tool:
        command = [sys.executable, "-m", "oomdoctor", "run", *tool, "--json", str(report_path), "-q", *target]
    else:
        command = [sys.executable, *target]
    start = time.perf_counter()
    proc = subprocess.run(command + program.args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    seen = json.loads(seen_path.read_text()) if seen_path.exists() else {}
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return Run(proc.returncode, proc.stdout, proc.stderr, seconds, seen, report)


def expected_steps(program: Program, seen: dict[str, Any]) -> int | None:
    if program.truth == "optimizer":
        return seen.get("optimizer_steps")
    if program.truth == "optimizer/2":
        return seen.get("optimizer_steps", 0) // 2
    if program.truth == "backward":
        return seen.get("backwards")
    return 0 if program.launcher else None


def check(program: Program, plain: Run, default: Run, exact: Run) -> tuple[dict[str, Any], list[str]]:
    """One row of the table and the list of failed checks."""
    problems: list[str] = []
    mask = (lambda text: re.sub(program.mask, "#", text)) if program.mask else (lambda text: text)
    for label, run in (("default", default), ("exact", exact)):
        if run.code != plain.code:
            problems.append(f"{label}: exit code {run.code}, plain python {plain.code}")
        if mask(run.stdout) != mask(plain.stdout):
            problems.append(f"{label}: stdout differs from plain python")
        if "Traceback" in run.stderr and "Traceback" not in plain.stderr:
            problems.append(f"{label}: a traceback on stderr: {run.stderr.strip().splitlines()[-1][:120]}")
        if run.report is None:
            problems.append(f"{label}: no JSON report")
    report = default.report or {}
    steps, truth = report.get("steps_total"), expected_steps(program, default.seen)
    if truth is not None and steps != truth:
        problems.append(f"steps: reported {steps}, the program did {truth}")
    real = default.seen.get("param_bytes", 0)
    at_peak = (report.get("peak_by_category") or {}).get("parameters")
    if real and at_peak is not None and at_peak != real:
        other = (report.get("peak_by_category") or {}).get("other")
        problems.append(f"parameters at the peak {at_peak:,} B, real {real:,} B (other {other:,} B)")
    first = (report.get("steps") or [{}])[0]
    if real and first.get("start_bytes") == 0:
        problems.append(f"step 0 starts at 0 B while {real:,} B of parameters are live")
    if report.get("steps_total") and report.get("peak_step") is None and not (report.get("aggregates") or {}).get("peak_where"):
        problems.append("peak_step is null, and the report does not say where the peak happened")
    peak, exact_peak = report.get("peak_bytes") or 0, (exact.report or {}).get("peak_bytes") or 0
    if exact_peak and abs(peak - exact_peak) > max(0.10 * exact_peak, 65536):
        problems.append(f"peak {peak:,} B by default vs {exact_peak:,} B with --exact ({peak / exact_peak - 1:+.0%})")
    if not steps and not report.get("findings") and not program.launcher:
        problems.append("0 steps, peak %s B and no finding: the work ran in child processes" % peak)
    row = {"program": program.name, "exit": f"{plain.code}/{default.code}/{exact.code}",
           "steps": f"{steps}/{truth}", "params": f"{at_peak}/{real}" if real else "-",
           "peak MB": f"{peak / 1e6:.2f}/{exact_peak / 1e6:.2f}",
           "time": f"{default.seconds / plain.seconds:.2f}x/{exact.seconds / plain.seconds:.2f}x",
           "plain s": f"{plain.seconds:.1f}"}
    return row, problems


def importable(module: str, env: dict[str, str]) -> bool:
    code = f"import warnings; warnings.simplefilter('ignore'); import {module}"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode == 0


def prepare_site(site: Path) -> None:
    """Install the programs' own dependencies into SITE, outside the project's environment."""
    packages = ["torchvision==0.28.0", "pillow", "gymnasium", "cloudpickle", "farama-notifications",
                "matplotlib", "contourpy", "cycler", "fonttools", "kiwisolver", "pyparsing", "python-dateutil", "six"]
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), *packages], check=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)


SITECUSTOMIZE = '''\
"""Benchmark-only (benchmarks/real_programs.py): PyPI torchvision beside a CPU torch.

Its _C.so links CUDA torch libraries and does not load; torchvision 0.28 then still registers
fakes for nms/qnms, unguarded, and its import fails. Define those two schemas on its first import.
"""
import sys


class _TorchvisionOps:
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            import torch

            _TorchvisionOps.lib = torch.library.Library("torchvision", "DEF")
            _TorchvisionOps.lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _TorchvisionOps.lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        return None


sys.meta_path.insert(0, _TorchvisionOps())
'''


def lint(programs: list[Program], roots: dict[str, Path], env: dict[str, str]) -> list[str]:
    """`oomdoctor lint` of the programs' scripts: one line per finding, to judge by hand."""
    scripts = sorted({str(roots[program.repo] / program.script) for program in programs})
    proc = subprocess.run([sys.executable, "-m", "oomdoctor", "lint", "--json", *scripts],
                          env=env, capture_output=True, text=True, timeout=600)
    try:
        findings = json.loads(proc.stdout)["findings"]
    except (ValueError, KeyError):
        return [f"lint gave no JSON (exit {proc.returncode}): {proc.stderr.strip()[-200:]}"]
    return [f"{f['file']}:{f['line']} {f['kind']}: {f['before']}" for f in findings]


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=Path, help="a checkout of pytorch/examples")
    parser.add_argument("--nanogpt", type=Path, help="a checkout of karpathy/nanoGPT")
    parser.add_argument("--mingpt", type=Path, help="a checkout of karpathy/minGPT")
    parser.add_argument("--site", type=Path, help="extra PYTHONPATH for the programs' own dependencies")
    parser.add_argument("--prepare-site", type=Path, metavar="DIR", help="install those dependencies into DIR")
    parser.add_argument("--only", help="comma-separated program names (prefixes)")
    parser.add_argument("--workdir", type=Path, help="keep the working folders here (default: a temporary one)")
    args = parser.parse_args()
    if args.prepare_site:
        prepare_site(args.prepare_site)
        return 0
    roots = {name: path for name, path in (("examples", args.examples), ("nanogpt", args.nanogpt),
                                           ("mingpt", args.mingpt)) if path is not None}
    marks = {"examples": "mnist/main.py", "nanogpt": "train.py", "mingpt": "mingpt/model.py"}
    for name, path in roots.items():
        if not (path / marks[name]).exists():
            parser.error(f"--{name} must point at a checkout of it ({path / marks[name]} is missing)")
    if not roots:
        parser.error("give --examples, --nanogpt or --mingpt")
    # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD: time_sequence_prediction and generate.py torch.load a numpy
    # array and a whole model, which torch >= 2.6 refuses by default (they fail under plain python too).
    env = dict(os.environ, OOMDOCTOR_DEVICE="cpu", CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0", MPLBACKEND="Agg",
               TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    if args.site:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.site.resolve()), env.get("PYTHONPATH")]))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="oomdoctor-real-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "launch.py").write_text(LAUNCHER)
    import torch

    print(f"torch {torch.__version__}, CPU, {os.cpu_count()} cores; checkouts {roots}; work in {work}")
    rows, failures, skipped = [], [], []
    for program in PROGRAMS:
        if args.only and not any(program.name.startswith(p) for p in args.only.split(",")):
            continue
        if program.repo not in roots:
            skipped.append(f"{program.name}: no --{program.repo} checkout given")
            continue
        missing = [m for m in program.needs if not importable(m, env)]
        if missing:
            skipped.append(f"{program.name}: {', '.join(missing)} not importable")
            continue
        checkout = roots[program.repo]
        cwd = work / (program.repo if program.repo != "examples" else program.script.split("/")[0])
        cwd.mkdir(exist_ok=True)
        if program.setup:
            program.setup(cwd)
        if program.repo == "nanogpt":
            _configurator(checkout, cwd)
        plain = run_one(program, checkout, cwd, env, [])
        default = run_one(program, checkout, cwd, env, ["--device", "cpu"])
        exact = run_one(program, checkout, cwd, env, ["--device", "cpu", "--exact"])
        row, problems = check(program, plain, default, exact)
        rows.append(row)
        failures += [f"{program.name}: {p}" for p in problems]
        print(f"  {program.name}: {row}", flush=True)  # as it goes: a slow machine may not see the end
        for problem in problems:
            print(f"    - {problem}", flush=True)
        for note in (default.report or {}).get("notes", []):  # what the default report tells its reader
            print(f"    note: {note[:150]}{'…' if len(note) > 150 else ''}", flush=True)
    print("\nexit plain/default/exact; steps reported/done; params at the peak/real (B); "
          "peak default/exact; whole-process time vs plain")
    if rows:
        print_table(rows)
    print(f"\n{len(failures)} failed check(s):" if failures else "\nall checks passed")
    for line in failures:
        print(f"  - {line}")
    for line in skipped:
        print(f"  skipped {line}")
    chosen = [p for p in PROGRAMS if p.repo in roots
              and (not args.only or any(p.name.startswith(o) for o in args.only.split(",")))]
    found = lint(chosen, roots, env)
    print(f"\noomdoctor lint of these scripts: {len(found)} finding(s)")
    for line in found:
        print(f"  {line}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
