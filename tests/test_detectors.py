"""The runtime detectors as pure functions: hand-built timelines in, findings out.

`retained-graph`, `missing-no-grad` and `memory-growth` read what the graph and growth probes
recorded (timeline events and the end-of-step series); here those records are written by hand,
so each rule that decides between a finding and silence is checked on its own.
"""
from __future__ import annotations

from oomdoctor.diagnosis.detectors import growth, missing_no_grad, retained_graph, run_detectors
from oomdoctor.report.model import Step
from oomdoctor.core.timeline import Timeline

KiB = 1024
MiB = 1024 * KiB
LOOP = {"file": "/work/train.py", "line": 33, "function": "<module>", "code": "total_loss += loss"}
FORWARD = {"file": "/work/train.py", "line": 28, "function": "<module>", "code": "out = model(x)"}


def timeline_with(*events: dict, exception: dict | None = None, ends: list[int] | None = None,
                  capacity: int | None = None) -> Timeline:
    t = Timeline(capacity=capacity)
    for i, end in enumerate(ends or []):
        t.add(Step(index=i, start_bytes=end, peak_bytes=end + MiB, end_bytes=end, duration_s=0.01))
    for e in events:
        t.add_event(**e)
    t.exception = exception
    return t


def retained(**over) -> dict:
    e = {"kind": "retained-graph", "holder": "total_loss", "clock": "step", "steps_alive": 38, "bytes": 380 * KiB,
         "bytes_per_step": 10 * KiB, "nodes": 400, "backward": True, "location": LOOP,
         "before": "total_loss += loss", "after": "total_loss += loss.item()", "method": ".item()",
         "forward_site": FORWARD, "provisional": False, "detected_at": 4}
    return {**e, **over}


def unused(**over) -> dict:
    e = {"kind": "unused-graph", "location": FORWARD, "module": "Net", "eval": True, "forwards": 40,
         "backwards": 0, "unused": 40, "saved_bytes": 3 * MiB}
    return {**e, **over}


def survivors(**over) -> dict:
    e = {"kind": "survivors", "all_exact": True, "capacity": None, "capacity_source": "ram", "scans": 0,
         "holder": None, "holder_series": [], "location": None}
    return {**e, **over}


# -- retained-graph --------------------------------------------------------------------------
def test_retained_graph_names_the_holder_the_line_the_count_and_the_fix():
    [f] = retained_graph.detect(timeline_with(retained()))
    assert f.kind == "retained-graph" and f.severity == "error"
    assert (f.location.file, f.location.line, f.location.code) == ("/work/train.py", 33, "total_loss += loss")
    assert "`total_loss`" in f.title and "38 steps" in f.title
    assert f.bytes == 380 * KiB
    assert (f.remedies[0].before, f.remedies[0].after) == ("total_loss += loss", "total_loss += loss.item()")
    assert "autograd nodes" in f.detail  # after backward, the node chain is what grows


def test_retained_graph_without_backward_offers_no_grad_for_the_forward_too():
    [f] = retained_graph.detect(timeline_with(retained(backward=False, clock="forward", steps_alive=8)))
    assert "8 forward passes" in f.title
    assert "saved for backward" in f.detail
    assert f.remedies[1].after == "with torch.no_grad():\n    out = model(x)"


def test_a_provisional_retained_graph_is_not_reported():
    # A detection on the forward clock waits for the end of the run: the graphs may still get
    # their backward (gradient accumulation, an RL episode).
    assert retained_graph.detect(timeline_with(retained(provisional=True))) == []


def test_retained_graph_without_a_named_holder_still_reports():
    [f] = retained_graph.detect(timeline_with(retained(holder=None, location=None, before=None, after=None)))
    assert f.location is None and f.remedies == [] and "outside your frames" in f.title


# -- missing-no-grad -------------------------------------------------------------------------
def test_missing_no_grad_points_at_the_forward_and_sizes_one_graph():
    [f] = missing_no_grad.detect(timeline_with(unused()))
    assert f.kind == "missing-no-grad"
    assert f.location.line == 28 and f.location.code == "out = model(x)"
    assert f.bytes == 3 * MiB
    assert "eval() mode" in f.detail and "40 forward passes" in f.detail
    assert f.remedies[0].after == "with torch.no_grad():\n    out = model(x)"
    assert "inference_mode" in f.remedies[1].after


def test_a_call_site_that_was_back_propagated_once_is_training_not_evaluation():
    # e.g. a training step that skips backward() on a NaN loss
    assert missing_no_grad.detect(timeline_with(unused(backwards=199, unused=1, forwards=200))) == []


def test_after_an_exception_one_unused_graph_is_not_enough():
    # The run died between forward and backward (an OOM in backward): that graph was going to be used.
    crashed = {"type": "OutOfMemoryError", "message": "out of memory", "frames": [], "phase": "backward"}
    assert missing_no_grad.detect(timeline_with(unused(unused=1, forwards=1), exception=crashed)) == []
    assert len(missing_no_grad.detect(timeline_with(unused(unused=2, forwards=2), exception=crashed))) == 1


# -- memory-growth ---------------------------------------------------------------------------
def test_steady_growth_is_reported_with_its_rate_and_the_step_it_runs_out():
    ends = [10 * MiB + 64 * KiB * i for i in range(40)]
    [f] = growth.detect(timeline_with(survivors(capacity=20 * MiB, capacity_source="--capacity"), ends=ends,
                                      capacity=20 * MiB))
    assert f.kind == "memory-growth"
    assert f.evidence["bytes_per_step"] == 64 * KiB
    # step 39 peaks at 10 MiB + 39*64 KiB + 1 MiB; 20 MiB is reached after (20 - 13.4375) MiB / 64 KiB more
    assert f.evidence["projected_oom_step"] == 39 + 105
    assert "out of memory near step 144" in f.title


def test_the_fit_shrugs_off_spikes():
    ends = [10 * MiB + 64 * KiB * i + (50 * MiB if i % 7 == 0 else 0) for i in range(40)]
    [f] = growth.detect(timeline_with(survivors(), ends=ends))
    assert f.evidence["bytes_per_step"] == 64 * KiB


def test_memory_that_rises_then_plateaus_is_not_growth():
    ends = [10 * MiB + 256 * KiB * min(i, 15) for i in range(40)]
    assert growth.detect(timeline_with(survivors(), ends=ends)) == []


def test_warm_up_in_the_first_steps_is_not_growth():
    # Adam's state and caches appear at steps 0..2, then the run is flat.
    ends = [2 * MiB, 6 * MiB, 7 * MiB] + [7 * MiB] * 37
    assert growth.detect(timeline_with(survivors(), ends=ends)) == []


def test_a_few_bytes_per_step_are_not_worth_a_finding():
    # `hist.append(loss.detach())`: one 4-byte scalar per step
    ends = [10 * MiB + 4 * i for i in range(200)]
    assert growth.detect(timeline_with(survivors(), ends=ends)) == []


def test_the_holders_own_bytes_give_the_rate_and_its_line_the_location():
    store = {"file": "/work/train.py", "line": 34, "function": "<module>", "code": "cache.append(f.detach())"}
    event = survivors(all_exact=False, holder="cache", location=store, scan_step=34,
                      holder_series=[[i, 16 * KiB * (i + 1), i + 1] for i in range(32, 40)])
    [f] = growth.detect(timeline_with(event, ends=[MiB] * 40))
    assert f.evidence["bytes_per_step"] == 16 * KiB and f.evidence["holder"] == "cache"
    assert f.location.line == 34


def test_a_bounded_holder_is_not_growth_whatever_the_ledger_saw():
    # deque(maxlen=N): full, then flat; a survivor pattern alone does not override the measurement.
    event = survivors(all_exact=False, holder="window", scan_step=66,
                      by_step=[[1, 16 * KiB], [2, 16 * KiB], [32, 16 * KiB], [64, 16 * KiB]],
                      holder_series=[[i, 320 * KiB, 20] for i in range(34, 66, 4)])
    assert growth.detect(timeline_with(event, ends=[MiB] * 66)) == []


def test_survivors_from_step_after_step_show_a_leak_on_a_sampled_run():
    event = survivors(all_exact=False, scan_step=66, by_step=[[1, 16 * KiB], [2, 16 * KiB], [32, 16 * KiB],
                                                               [64, 16 * KiB]],
                      sites=[{**LOOP, "bytes": 64 * KiB, "steps": 4}])
    [f] = growth.detect(timeline_with(event, ends=[MiB] * 66))
    assert f.evidence["bytes_per_step"] == 16 * KiB and f.location.line == 33


def test_survivors_of_the_first_steps_only_are_warm_up():
    event = survivors(all_exact=False, scan_step=66, by_step=[[1, 16 * KiB], [2, 16 * KiB], [32, 0], [64, 0]])
    assert growth.detect(timeline_with(event, ends=[MiB] * 66)) == []


def test_growth_explained_by_a_retained_graph_is_reported_once():
    ends = [10 * MiB + 64 * KiB * i for i in range(40)]
    t = timeline_with(survivors(), retained(bytes_per_step=64 * KiB, backward=False), ends=ends)
    assert [f.kind for f in run_detectors(t)[0]] == ["retained-graph"]


def test_theil_sen_is_the_median_slope():
    assert growth.theil_sen([(0, 0), (1, 10), (2, 20), (3, 1000), (4, 40)]) == 10
