"""Make docs/html-report.png: the HTML report of a real run, shot by headless Chromium.

The run is `oomdoctor run --exact --json` of recipes/retained_graph_history.py (on the CPU, so any
machine makes the same picture): a training loop that keeps every step's logits, graph attached,
in `self.history['logits']`; memory rises a little every step, and oomdoctor names the line.
`oomdoctor report --html` renders the saved JSON, as a user would. Nothing is made up: the
report has no batch-size section because this run made no batch search.

    python docs/make_screenshot.py [OUT.png]    # needs `chromium` (Debian: apt-get install -y chromium)
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = "recipes/retained_graph_history.py"  # relative: the report shows the command as typed
SIZE = (1280, 1250)  # the whole page: header, chart, breakdown, the finding with its fix


def oomdoctor(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OOMDOCTOR_DEVICE": "cpu", "COLUMNS": "100"}
    subprocess.run([sys.executable, "-m", "oomdoctor", *args], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL, timeout=600)


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
             f"--window-size={size[0]},{size[1]}", f"--screenshot={png.resolve()}", html.resolve().as_uri()],
            capture_output=True, text=True, timeout=60, check=True)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("html-report.png")
    with tempfile.TemporaryDirectory() as tmp:
        report, page = Path(tmp) / "report.json", Path(tmp) / "report.html"
        oomdoctor("run", "--quiet", "--exact", "--json", str(report), RECIPE)
        oomdoctor("report", str(report), "--html", str(page), "--quiet")
        screenshot(page, out)
    print(out)


if __name__ == "__main__":
    main()
