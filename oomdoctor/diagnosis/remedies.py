"""Fixes for a memory problem, each with the bytes it saves, computed from the ledger's breakdown.

Pure: numbers in, ranked `Remedy`s out (largest saving first). Honest about what does not help:
`torch.cuda.empty_cache()` frees only cached, unallocated blocks (it helps other processes and
fragmentation, never live tensors), and `del` helps only for a tensor one of the user's names
keeps (never for activations saved for backward, which the autograd graph keeps). A saving that
is not measured says it is an estimate and why; no remedy is offered twice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..report.model import Remedy
from ..sizes import format_bytes
from . import forward_line
from .forward_line import ForwardLine

HEADROOM = 0.10  # keep this share of capacity free when recommending a batch size


@dataclass
class Situation:
    """What was live when memory ran out (or peaked)."""

    by_category: dict[str, int]
    capacity: int | None = None
    batch_size: int | None = None
    phase: str | None = None  # forward | backward | optimizer | other
    requested: int | None = None
    reserved_unallocated: int = 0  # CUDA: reserved by the allocator but not allocated
    per_sample_bytes: float = 0.0  # a completed step's peak beyond parameters, gradients, state
    trains: bool = True  # gradients will exist (an optimizer or backward was seen)
    largest: list[dict[str, Any]] = field(default_factory=list)  # {bytes, category, site, holders?}
    forward: ForwardLine | None = None  # the user's line that made the activations
    device_type: str = "cuda"
    step: int | None = None  # the step that was running when memory ran out


@dataclass
class BatchFit:
    """A smaller batch that fits, and how many accumulation steps keep the effective batch."""

    size: int  # the batch size to use
    steps: int  # gradient-accumulation steps
    largest: int  # the largest batch size that fits
    per_sample: float  # bytes per sample the estimate used
    saves: int
    cost: str  # where per_sample comes from: measured, or an estimate and why


def batch_that_fits(s: Situation) -> BatchFit | None:
    """A batch size that fits, with peak(b) = fixed + per_sample * b, or None.

    fixed: parameters, gradients (the size of the parameters when training will create them)
    and optimizer state. per_sample: the largest of what is known of it, each a lower bound of
    the true cost (see `_per_sample`).
    """
    c = s.by_category
    if not (s.capacity and s.batch_size and s.batch_size > 1):
        return None
    gradients = max(c.get("gradients", 0), c.get("parameters", 0) if s.trains else 0)
    fixed = c.get("parameters", 0) + gradients + c.get("optimizer_state", 0)
    per_sample, cost = _per_sample(s, fixed)
    if per_sample <= 0:
        return None
    budget = s.capacity * (1 - HEADROOM) - fixed
    largest = min(s.batch_size - 1, math.floor(budget / per_sample))
    if largest < 1:
        return None
    size, steps = accumulation(s.batch_size, largest)
    return BatchFit(size, steps, largest, per_sample, int((s.batch_size - size) * per_sample), cost)


def _per_sample(s: Situation, fixed: int) -> tuple[float, str]:
    """Bytes per sample and where the figure comes from: the largest of a completed step's
    measured cost, what was live at the failure (less parameters and optimizer state, plus the
    failed request when it grows with the batch, as forward and backward requests do), and
    what the failure itself proves (the batch did not fit next to the fixed part)."""
    c, b = s.by_category, s.batch_size or 1
    asked = (s.requested or 0) if s.phase in ("forward", "backward") else 0
    live = sum(c.values()) - c.get("parameters", 0) - c.get("optimizer_state", 0)
    measured, at_failure = s.per_sample_bytes, (live + asked) / b
    did_not_fit = (s.capacity - fixed) / b if s.capacity else 0.0
    best = max(measured, at_failure, did_not_fit)
    if best == measured:
        return best, (f"Measured: a completed step cost {format_bytes(best)} per sample beyond parameters "
                      "and optimizer state.")
    if best == at_failure:
        plus = f" plus the {format_bytes(asked)} asked for" if asked else ""
        why = (f"the {format_bytes(live)} live beyond parameters and optimizer state when the {s.phase} pass "
               f"failed{plus}, over {b} samples")
    else:
        why = (f"{b} samples did not fit in {format_bytes(s.capacity)} next to {format_bytes(fixed)} of "
               "parameters, gradients and optimizer state")
    return best, (f"Estimated: at least {format_bytes(best)} per sample ({why}); a lower bound, as no step of "
                  "this size completed: confirm with `oomdoctor batch`.")


def accumulation(batch: int, largest: int) -> tuple[int, int]:
    """(size, steps), size <= largest. size * steps == batch (the effective batch is kept) when
    a divisor of the batch needs at most twice the fewest steps; otherwise the fewest steps with
    equal sizes, and the effective batch becomes size * steps (a little above the batch)."""
    fewest = math.ceil(batch / largest)
    for steps in range(fewest, 2 * fewest + 1):
        if batch % steps == 0:
            return batch // steps, steps
    return math.ceil(batch / fewest), fewest


def _batch_remedy(s: Situation, fit: BatchFit) -> Remedy:
    per_sample = format_bytes(fit.per_sample)
    effective = fit.size * fit.steps
    keeps = (f"{fit.size} × {fit.steps} = {effective}: the effective batch stays {s.batch_size}."
             if effective == s.batch_size else
             f"The effective batch becomes {fit.size} × {fit.steps} = {effective} (now {s.batch_size}): no "
             f"divisor of {s.batch_size} up to {fit.largest} splits it into few steps.")
    return Remedy(
        f"Use batch size {fit.size} and accumulate gradients over {fit.steps} steps (now {s.batch_size})",
        fit.saves,
        f"{fit.cost} Up to {fit.largest} samples fit with {HEADROOM:.0%} of the capacity left free. {keeps} "
        f"Saves {s.batch_size - fit.size} samples × {per_sample} (an estimate from that cost).",
        before="loss.backward(); optimizer.step(); optimizer.zero_grad()",
        after=f"(loss / {fit.steps}).backward()\nif (i + 1) % {fit.steps} == 0:\n"
              "    optimizer.step(); optimizer.zero_grad()",
    )


def rank(s: Situation) -> list[Remedy]:
    c = s.by_category
    activations, gradients = c.get("activations", 0), c.get("gradients", 0)
    optimizer_state, parameters = c.get("optimizer_state", 0), c.get("parameters", 0)
    remedies: list[Remedy] = []
    fit = batch_that_fits(s)
    if fit:
        remedies.append(_batch_remedy(s, fit))
    if activations:
        remedies += _activation_remedies(s, activations)
    if gradients and s.phase == "forward":
        remedies.append(Remedy(
            "Free gradients before the forward pass: zero_grad(set_to_none=True)", gradients,
            "Gradients of the previous step were still alive while this forward ran.",
            before="optimizer.zero_grad(set_to_none=False)",
            after="optimizer.zero_grad(set_to_none=True)  # the default since PyTorch 2.0",
        ))
    if optimizer_state > parameters > 0:
        remedies.append(Remedy(
            "Use a lighter optimizer state", optimizer_state // 2,
            "Optimizer state outweighs the parameters (Adam keeps two tensors per parameter). SGD with "
            "momentum keeps one, about half of it (an estimate from that count); 8-bit Adam "
            "(bitsandbytes) or Adafactor keep much less.",
        ))
    if s.reserved_unallocated and s.requested and s.reserved_unallocated >= s.requested:
        remedies.append(Remedy(
            "Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True", s.reserved_unallocated,
            "Enough memory was reserved but free in pieces too small for the request: fragmentation, "
            "not size. Expandable segments let the allocator grow segments instead of splitting them.",
        ))
    remedies += _del_remedies(s)
    remedies.sort(key=lambda r: r.saves_bytes or 0, reverse=True)
    unique = {(r.title, r.before, r.after): r for r in reversed(remedies)}  # the first of equals stays
    return [r for r in remedies if unique.get((r.title, r.before, r.after)) is r]


def _activation_remedies(s: Situation, activations: int) -> list[Remedy]:
    """Autocast and checkpointing, shown on the user's own forward line when it is known."""
    fwd = s.forward
    where = f" Your forward: {_short(fwd.file)}:{fwd.line}." if fwd else " Wrap the line that calls your model."
    autocast = Remedy(
        "Run the forward pass in bf16 autocast", activations // 2,
        f"Saves about half of the {format_bytes(activations)} of activations (an estimate: bf16 stores 2 bytes "
        "a value where float32 stores 4, and what autocast keeps in float32, such as softmax, norms and "
        "losses, saves nothing). Parameters and optimizer state stay float32." + where,
        before=fwd.code if fwd else None,
        after=forward_line.autocast(fwd, s.device_type) if fwd else None,
    )
    estimate = (f"about half of the {format_bytes(activations)} of activations saved (an estimate: it "
                "depends on how the blocks split the model), for about one extra forward pass")
    rewritten = forward_line.checkpoint(fwd) if fwd else None
    if fwd and fwd.in_module:
        title = f"Checkpoint the block at {_short(fwd.file)}:{fwd.line}"
        detail = f"Recomputes its activations in backward instead of keeping them: {estimate}."
    elif rewritten:
        title = f"Checkpoint the model in {forward_line.SEGMENTS} segments"
        detail = (f"For an nn.Sequential model: only the segments' boundaries are kept and each segment is "
                  f"recomputed in backward: {estimate}. Other models: checkpoint the blocks inside their "
                  "forward (`torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)`; Hugging Face "
                  "models: `model.gradient_checkpointing_enable()`).")
    else:
        title = "Checkpoint activations of the repeated blocks"
        detail = (f"Recomputes activations in backward instead of keeping them: {estimate}. In the model's "
                  "forward: `x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)`.")
    checkpoint = Remedy(title, activations // 2, detail, before=fwd.code if rewritten else None,
                        after=rewritten)
    return [autocast, checkpoint]


def _del_remedies(s: Situation) -> list[Remedy]:
    """`del NAME` where one of the user's names (`holders`, found at the failure) keeps a large
    tensor made in an earlier step than the one that failed: the previous step's outputs or loss,
    still named while this step runs. Not for the failing step's own tensors: its activations and
    its input are kept by the autograd graph for backward, which no `del` frees."""
    held: dict[str, list[dict[str, Any]]] = {}  # name -> the tensors it keeps, each once
    for tensor in s.largest:
        earlier = s.step is not None and tensor.get("step") is not None and tensor["step"] < s.step
        if earlier:
            for name in tensor.get("holders") or ():
                held.setdefault(name, []).append(tensor)
    total = sum(s.by_category.values())
    offered: list[Remedy] = []
    for name, tensors in held.items():
        kept = sum(t["bytes"] for t in tensors)
        if kept < 0.1 * total:
            continue
        sites = sorted({f"{_short(t['site']['file'])}:{t['site']['line']}" for t in tensors if t.get("site")})
        made = f", made at {', '.join(sites)}" if sites else ""
        offered.append(Remedy(
            f"`del {name}` once it is used", kept,
            f"`{name}` keeps {format_bytes(kept)} of an earlier step alive ({len(tensors)} tensor"
            f"{'s' if len(tensors) > 1 else ''}{made}). `del` frees them when that is their last reference; "
            "torch.cuda.empty_cache() would not (it frees cached blocks, never live tensors).",
        ))
    return offered


def _short(path: str) -> str:
    return path.rsplit("/", 1)[-1]
