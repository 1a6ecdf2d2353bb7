"""Fixes for a memory problem, each with the bytes it saves, computed from the ledger's breakdown.

Pure: numbers in, ranked `Remedy`s out (largest saving first). Honest about what does not help:
`torch.cuda.empty_cache()` frees only cached, unallocated blocks (it helps other processes and
fragmentation, never live tensors), and `del` helps only for large tensors no longer used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..report.model import Remedy
from ..sizes import format_bytes

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
    largest: list[dict[str, Any]] = field(default_factory=list)  # {bytes, category, site}


def batch_that_fits(s: Situation) -> tuple[int, int] | None:
    """(batch size, bytes saved), with peak(b) = fixed + per_sample * b, or None.

    per_sample: a completed step's peak beyond parameters, gradients and optimizer state, per
    sample (without one, a failed forward's partial activations plus the failed request: a lower
    bound). fixed: parameters, gradients (the size of the parameters when training will create
    them) and optimizer state.
    """
    c = s.by_category
    if not (s.capacity and s.batch_size and s.batch_size > 1):
        return None
    per_sample = max(s.per_sample_bytes, _partial_per_sample(s))
    if per_sample <= 0:
        return None
    gradients = max(c.get("gradients", 0), c.get("parameters", 0) if s.trains else 0)
    fixed = c.get("parameters", 0) + gradients + c.get("optimizer_state", 0)
    budget = s.capacity * (1 - HEADROOM) - fixed
    fits = min(s.batch_size - 1, math.floor(budget / per_sample))
    if fits < 1:
        return None
    return fits, int((s.batch_size - fits) * per_sample)


def _partial_per_sample(s: Situation) -> float:
    """A forward that failed half-way: its activations so far plus the request, per sample."""
    c = s.by_category
    return (c.get("activations", 0) + (s.requested or 0) * (s.phase == "forward")) / (s.batch_size or 1)


def rank(s: Situation) -> list[Remedy]:
    c = s.by_category
    activations, gradients = c.get("activations", 0), c.get("gradients", 0)
    optimizer_state, parameters = c.get("optimizer_state", 0), c.get("parameters", 0)
    remedies: list[Remedy] = []
    fit = batch_that_fits(s)
    if fit:
        size, saves = fit
        steps = math.ceil(s.batch_size / size)
        # Only a lower bound on the per-sample cost when no forward pass ever completed.
        bound = s.phase == "forward" and s.per_sample_bytes <= _partial_per_sample(s)
        title = (f"Use a batch size of at most {size} (now {s.batch_size}); confirm with `oomdoctor batch`"
                 if bound else f"Use batch size {size} (now {s.batch_size})")
        remedies.append(Remedy(
            title, saves,
            f"Activations cost ~{format_bytes(saves / (s.batch_size - size))} per sample; {size} leaves "
            f"{HEADROOM:.0%} headroom. Accumulate gradients over {steps} steps to keep the effective batch "
            f"of {s.batch_size}.",
            before="loss.backward(); optimizer.step(); optimizer.zero_grad()",
            after=f"(loss / {steps}).backward()\nif (i + 1) % {steps} == 0:\n    optimizer.step(); optimizer.zero_grad()",
        ))
    if activations:
        remedies.append(Remedy(
            "Run the forward pass in bf16 autocast", activations // 2,
            "Halves float32 activations; parameters and optimizer state stay float32.",
            before="out = model(x)",
            after="with torch.autocast(device_type='cuda', dtype=torch.bfloat16):\n    out = model(x)",
        ))
        remedies.append(Remedy(
            "Checkpoint activations of the repeated blocks", activations // 2,
            "Recomputes activations in backward instead of keeping them: roughly half or more of "
            "them saved on deep models, for about one extra forward pass.",
            before="x = block(x)",
            after="x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)",
        ))
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
            "momentum keeps one; 8-bit Adam (bitsandbytes) or Adafactor keep much less.",
        ))
    if s.reserved_unallocated and s.requested and s.reserved_unallocated >= s.requested:
        remedies.append(Remedy(
            "Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True", s.reserved_unallocated,
            "Enough memory was reserved but free in pieces too small for the request: fragmentation, "
            "not size. Expandable segments let the allocator grow segments instead of splitting them.",
        ))
    for tensor in s.largest:
        site = tensor.get("site")
        if tensor.get("category") in ("other", "activations") and site and tensor["bytes"] >= 0.1 * sum(c.values()):
            remedies.append(Remedy(
                f"`del` the {format_bytes(tensor['bytes'])} tensor from {site['file']}:{site['line']} once used",
                tensor["bytes"],
                "Only helps if nothing uses it any more: `del` frees a tensor when its last reference goes. "
                "torch.cuda.empty_cache() would not: it frees cached blocks, never live tensors.",
            ))
    remedies.sort(key=lambda r: r.saves_bytes or 0, reverse=True)
    return remedies
