"""Rendering a report with a huge string costs what rendering a normal one costs.

    python benchmarks/report_render.py

A finding detail of 1 KB, 4 MB, 16 MB and 200 MB (a live report: a saved file is refused above
32 MiB before it is parsed), rendered for the terminal (rich, 100 columns) and as HTML. Before the
cap (report/text.py), rich wrapped the whole string: 4 MB took 4.5 s, 16 MB 54 s, 200 MB did not
end. Prints each time and its ratio to the 1 KB baseline measured in the same run.
"""
from __future__ import annotations

import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oomdoctor.report.console import print_report  # noqa: E402
from oomdoctor.report.html import render_html  # noqa: E402
from oomdoctor.report.model import Device, Finding, Location, Report, Step  # noqa: E402


def report(detail_bytes: int) -> Report:
    steps = [Step(i, 100, 300, 120, 0.01) for i in range(256)]
    finding = Finding("memory-growth", "warning", "grows", "x" * detail_bytes, Location("t.py", 1, "f", "x = 1"), 10)
    return Report(Device("cpu", "cpu", None), steps=steps, steps_total=256, peak_bytes=300, findings=[finding])


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    base_console = base_html = None
    print(f"{'detail':>8} {'terminal':>10} {'ratio':>6} {'html':>10} {'ratio':>6}")
    for label, size in (("1 KB", 1024), ("4 MB", 4 << 20), ("16 MB", 16 << 20), ("200 MB", 200 << 20)):
        r = report(size)
        console = best_of(lambda: print_report(r, file=io.StringIO()))
        html = best_of(lambda: render_html(r))
        base_console, base_html = base_console or console, base_html or html
        print(f"{label:>8} {console * 1000:>8.1f}ms {console / base_console:>6.2f} "
              f"{html * 1000:>8.1f}ms {html / base_html:>6.2f}")


if __name__ == "__main__":
    main()
