"""Make docs/html-report.png: the HTML report of a realistic run, shot by headless Chromium.

The run is built by hand from the report dataclasses (no GPU needed): 40 training steps on an
8 GiB GPU where `history.append(logits)` keeps every step's output and graph alive, so memory rises
by 106 MiB a step until step 40 runs out of memory; plus a validation forward without no_grad and a
batch-size recommendation.

    python docs/make_screenshot.py [OUT.png]    # needs `chromium` (Debian: apt-get install -y chromium)
"""
from __future__ import annotations

import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oomdoctor.report.html import write_html  # noqa: E402
from oomdoctor.report.model import Device, ExitInfo, Finding, Location, Remedy, Report, Step  # noqa: E402

MiB = 2**20
SIZE = (1280, 2200)  # the whole page: header, chart, breakdown, both findings, batch sizes


def realistic_report() -> Report:
    params, grads, adam = 330 * MiB, 330 * MiB, 660 * MiB
    leak, jitter = 106 * MiB, random.Random(7)
    steps = []
    for i in range(40):
        kept = leak * i  # the logits (and graphs) of the earlier steps, held by `history`
        state = adam if i else 0  # Adam creates its state in the first step()
        activations = 2600 * MiB + jitter.randint(-24, 24) * MiB
        start = params + (grads + state if i else 0) + kept
        by_category = {"parameters": params, "gradients": grads, "optimizer_state": state,
                       "activations": activations, "other": kept}
        steps.append(Step(index=i, start_bytes=start, peak_bytes=sum(by_category.values()),
                          end_bytes=params + grads + adam + kept + leak,
                          duration_s=0.21 + jitter.random() * 0.02, by_category=by_category))
    peak = max(steps, key=lambda s: s.peak_bytes)
    retained = Finding(
        kind="retained-graph", severity="error",
        title="`history` keeps the output and graph of every step alive",
        detail="Each step appends `logits`, which still carries its autograd graph, to `history`: "
               "40 steps × 106 MiB are alive, memory grows by 106 MiB a step and ran out at step 40.",
        location=Location("train.py", 58, "train_one_epoch", "history.append(logits)"),
        bytes=40 * leak,
        remedy="Keep a detached copy, or only the number you need.",
        remedies=[
            Remedy("Keep only the metric", 40 * leak, "nothing per step stays on the GPU",
                   "history.append(logits)", "correct += (logits.argmax(1) == labels).sum().item()"),
            Remedy("Keep a detached CPU copy", 40 * leak, "the copy lives in host memory, without a graph",
                   "history.append(logits)", "history.append(logits.detach().cpu())"),
        ],
    )
    no_grad = Finding(
        kind="missing-no-grad", severity="warning",
        title="Validation forward builds a graph nobody back-propagates",
        detail="`model.eval()` is set but grad mode is on: the forward in `evaluate` saved 2.54 GiB of "
               "activations for a backward that never came.",
        location=Location("train.py", 91, "evaluate", "logits = model(images)"),
        bytes=2600 * MiB,
        remedy="Run evaluation under `torch.inference_mode()`.",
        remedies=[Remedy("Decorate evaluate with torch.inference_mode()", 2600 * MiB, "",
                         "def evaluate(model, loader):\n    model.eval()\n    for images, labels in loader:\n"
                         "        logits = model(images)",
                         "@torch.inference_mode()\ndef evaluate(model, loader):\n    model.eval()\n"
                         "    for images, labels in loader:\n        logits = model(images)")],
    )
    trials = [(64, True, 3920, 1.9, "measured"), (128, True, 6520, 0.4, "predicted"),
              (192, False, 9120, 0.4, "predicted"), (160, True, 7820, 2.8, "measured"),
              (176, False, 8470, 2.9, "measured"), (168, True, 8145, 3.0, "measured")]
    return Report(
        device=Device("cuda", "NVIDIA GeForce RTX 4060 Ti", 8 * 1024 * MiB, simulated=False, index=0),
        steps=steps, steps_total=40, peak_bytes=peak.peak_bytes, peak_step=peak.index,
        peak_by_category=dict(peak.by_category), findings=[no_grad, retained],
        exit=ExitInfo(1, "OutOfMemoryError: CUDA out of memory. Tried to allocate 128.00 MiB. GPU 0 has a "
                         "total capacity of 8.00 GiB of which 96.00 MiB is free. Of the allocated memory "
                         "7.86 GiB is allocated by PyTorch, and 12.40 MiB is reserved by PyTorch but unallocated."),
        accounting="cuda-allocator", command=["train.py", "--batch-size", "64", "--epochs", "3"],
        duration_s=9.4,
        batch={"max_batch_size": 168, "recommended_batch_size": 144,
               "trials": [{"batch_size": b, "fits": f, "peak_bytes": p * MiB, "seconds": s, "source": src}
                          for b, f, p, s, src in trials]},
        notes=["oomdoctor: warning: NVML is not available: memory outside PyTorch's allocator "
               "(CUDA context, other processes) is not shown"],
    )


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(html: Path, png: Path, size: tuple[int, int] = SIZE) -> subprocess.CompletedProcess:
    """Load `html` in headless Chromium and save a `size` screenshot to `png`."""
    browser = chromium()
    if browser is None:
        raise SystemExit("no chromium binary found (Debian: apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
             "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
             f"--window-size={size[0]},{size[1]}", f"--screenshot={png}", html.resolve().as_uri()],
            capture_output=True, text=True, timeout=60, check=True)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("html-report.png")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "report.html"
        write_html(realistic_report(), page)
        screenshot(page, out)
    print(out)


if __name__ == "__main__":
    main()
