"""From what a session recorded to the plain-data `Report` the renderers draw."""
from __future__ import annotations

import platform
import time
from typing import TYPE_CHECKING, Any

import torch

from ..probes import cuda
from ..report.model import CATEGORIES, Device, ExitInfo, Report

if TYPE_CHECKING:
    from ..session import Session


def build_report(session: "Session", exit_code: int | None) -> Report:
    from ..diagnosis.confirm import confirm_with_lint
    from ..diagnosis.detectors import run_detectors

    t = session.timeline
    findings, notes = run_detectors(t)
    findings = confirm_with_lint(findings)
    exception = t.exception
    return Report(
        device=device_info(session),
        steps=t.steps(),
        steps_total=t.steps_total,
        peak_bytes=t.peak_bytes,
        peak_step=t.peak_step,
        peak_by_category={k: t.peak_by_category.get(k, 0) for k in CATEGORIES},
        findings=findings,
        exit=ExitInfo(
            code=exit_code if exit_code is not None else (1 if exception else 0),
            exception=f"{exception['type']}: {exception['message']}" if exception else None,
        ),
        accounting=accounting(session),
        command=session.command,
        duration_s=round(time.perf_counter() - session.started_at, 3),
        aggregates=_aggregates(session),
        notes=session.notes + _run_notes(session, findings) + notes,
    )


def write_memory_viz(session: "Session") -> None:
    """`--memory-viz PATH`: a snapshot pytorch.org/memory_viz opens, from the CUDA allocator or,
    on CPU, from the ledger's allocation events."""
    if not session.memory_viz:
        return
    try:
        if session.on_cuda:
            cuda.dump_snapshot(session.memory_viz)
        elif session.recorder is not None:
            from ..gpu.memviz import write_snapshot

            write_snapshot(session.recorder, session.memory_viz)
        session.notes.append(f"memory snapshot: {session.memory_viz} (open it at https://pytorch.org/memory_viz)")
    except Exception as exc:
        session.warn(f"memory snapshot not written to {session.memory_viz} ({exc!r})")


def accounting(session: "Session") -> str:
    if session.on_cuda:
        return "cuda-allocator"
    return "ledger" if session.exact else "ledger-sampled"


def device_info(session: "Session") -> Device:
    if session.on_cuda:
        props = torch.cuda.get_device_properties(session.device)
        capacity = session.capacity or props.total_memory
        return Device("cuda", props.name, capacity, session.simulated, session.device.index)
    name = platform.processor() or platform.machine() or "cpu"
    return Device(session.device.type, name, session.capacity, session.simulated, None)


def _aggregates(session: "Session") -> dict[str, Any]:
    t = session.timeline
    aggregates: dict[str, Any] = {"steps_total": t.steps_total}
    if session.on_cuda:
        view, note = cuda.device_view(session.device, session.meter.reserved_peak)
        if note and note not in session.notes:
            session.notes.append(note)
        aggregates.update(view)
    if session.recorder is not None:
        aggregates["predicted_cuda_reserved_peak_bytes"] = session.recorder.predicted_reserved_peak
    gpu = _aggregates_gpu(session)
    if gpu is not None:
        aggregates["gpu"] = gpu
    if t.batch_size:
        aggregates["batch_size"] = t.batch_size
    if t.peak_where:
        aggregates["peak_where"] = t.peak_where
    if t.peak_estimated:
        aggregates["peak_estimated"] = True
    return aggregates


def _run_notes(session: "Session", report_findings: list) -> list[str]:
    """What the numbers cannot show by themselves: where the peak was, what was not watched."""
    t = session.timeline
    notes = []
    if t.peak_where and t.peak_step is None:
        bound = (" It is an estimate: outside the watched steps memory is read where forward and backward "
                 "passes end, plus the last watched step's headroom; a forward frees its own temporaries "
                 "before it returns, so the real peak may differ either way; --exact sees them."
                 if t.peak_estimated else "")
        notes.append(f"The peak ({'~' if t.peak_estimated else ''}{_mib(t.peak_bytes)}) happened {t.peak_where}, "
                     f"not inside a step.{bound}")
    if t.unwatched_forwards:
        notes.append(f"{t.unwatched_forwards} forward pass(es) ran after the last step (an evaluation, "
                     "say) without the per-op view: memory was read where each returned, so their own "
                     "temporaries are not in the peak, which may have been higher there; --exact "
                     "measures them.")
    if t.peak_estimated:
        low, high = session.meter.headroom.spread
        noise = session.meter.heap.noise
        off = max(high - low if high >= low else 0, noise)
        spread = (f" Watched steps peaked {_mib(low)} to {_mib(high)} above their highest reading"
                  if high >= low else " On watched steps")
        spread += (f", and the rest of the heap moved by up to {_mib(noise)} within a step" if noise else "")
        spread += f": an estimate may be off by about {_mib(off)}."
        notes.append("`~` marks an estimated peak: on steps the per-op view did not watch, the peak "
                     "between two readings is the highest reading plus the headroom of the last "
                     f"watched step (--exact measures every step).{spread}")
    if t.steps_total == 0 and session.hooks.children:
        notes.append(f"This process ran no step, and started {session.hooks.children} child process(es) "
                     "(mp.spawn, a Pool, DataLoader workers): work there is not watched. Launch the "
                     "ranks with `oomdoctor run --nproc-per-node N` or torchrun, or call "
                     "`oomdoctor.track()` inside the worker function.")
    if _heap_totals(session) and any(f.kind == "retained-graph" for f in report_findings):
        notes.append("On steps the per-op view skipped, totals come from the C heap: they include the "
                     "host memory of the retained autograd graphs (about 1 KB per node), which "
                     "--exact, counting tensor storages only, leaves out.")
    heap = session.meter.heap
    # Growth between watched steps beyond what the heap moved within one (an episode's data of
    # varying size is not growth), where the totals do come from the heap.
    if (heap.drift >= max(64 << 10, t.peak_bytes // 100, heap.noise) and not heap.unreliable
            and _heap_totals(session)):
        notes.append(f"While every op was watched, the C heap beyond the tensors grew by about {_mib(heap.drift)} "
                     "a step (host memory that is no tensor storage: Python objects, data loading, a "
                     "library's own buffers). The default totals of later steps come from the heap and "
                     "count that growth too, so they may run high by that much a step; --exact counts "
                     "tensor storages only.")
    if heap.skipped:
        cost = heap.seconds / max(heap.reads, 1)
        cost_text = f"{cost * 1e3:.1f} ms" if cost >= 1e-3 else f"{cost * 1e6:.0f} µs"
        notes.append(f"The C heap was read {heap.reads:,} times and {heap.skipped:,} readings were skipped, to "
                     f"keep oomdoctor's cost near 1 % of the run: one reading took {cost_text} here (a "
                     "fragmented heap, or many forward passes a step). Between readings a total is the last "
                     "reading plus the change in parameters, gradients and optimizer state; --exact "
                     "measures every op.")
    if heap.unreliable:
        notes.append("The C heap moved by more than the tensors did while every op was watched (tiny "
                     "tensors beside numpy arrays or environment objects): steps the per-op view "
                     "skipped are read at their boundaries only, and their peaks are estimated from "
                     "the last watched step's activations: a step that did more (a longer episode) "
                     "may have peaked above the peak shown (--exact measures every step).")
    gpu = _aggregates_gpu(session)
    if gpu is not None:
        verdict = (f"fits with {_mib(gpu['headroom_bytes'])} to spare" if gpu["fits"]
                   else f"does not fit: {_mib(-gpu['headroom_bytes'])} short")
        notes.append(f"Predicted for {gpu['name']} (unvalidated): the caching allocator would reserve "
                     f"{_mib(gpu['reserved_peak_bytes'])} at the peak; with about {_mib(gpu['context_bytes'])} "
                     f"of CUDA context, {_mib(gpu['allocator_bytes'])} of the card's {_mib(gpu['memory_bytes'])} "
                     f"is the allocator's: the run {verdict}. Assumes: {'; '.join(gpu['assumptions'])}.")
    threads = session.hooks.other_threads
    if threads:
        names = ", ".join(sorted(threads)[:4])
        if t.steps_total == 0:
            notes.append(f"Training ran in other threads ({names}), which oomdoctor does not watch: "
                         "start the session in the thread that trains (`oomdoctor.track()` there).")
        else:
            notes.append(f"Work in other threads ({names}) was not watched: steps are those of the "
                         "thread that started the session.")
    return notes


def _heap_totals(session: "Session") -> bool:
    """Some steps' totals were read from the C heap (CPU, per-op view not on every step)."""
    from . import malloc

    return (not session.on_cuda and not session.exact and malloc.available()
            and session.timeline.steps_total > session.sampler.warmup)


def _aggregates_gpu(session: "Session") -> dict[str, Any] | None:
    if session.gpu is None or session.recorder is None:
        return None
    from ..gpu.cards import card_fit

    return card_fit(session.gpu, session.recorder.predicted_reserved_peak).to_dict()


def _mib(n: int) -> str:
    from ..sizes import format_bytes

    return format_bytes(n)
