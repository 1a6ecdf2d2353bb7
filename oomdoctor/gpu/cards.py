"""Common GPUs, and how a run's memory would fit one you do not have: a prediction from a CPU run.

Contract: `CARDS` maps a card's name (e.g. "A100-40GB") to a `Card`: the memory CUDA reports
(`torch.cuda.get_device_properties().total_memory`, as PyTorch's OOM messages print it) and a
typical share of it the caching allocator never gets: the CUDA context with the kernels of
PyTorch, cuBLAS and cuDNN loaded in it. `card(name)` finds one (case, spaces and dashes do not
matter) or raises `BadInput` naming the known ones. `card_fit(card, reserved_peak_bytes)` says
whether a run whose allocator reserved that much fits, with the headroom; `ASSUMPTIONS` lists
what such a prediction takes for granted. Predicted reserved bytes come from the allocator model
(`allocator_model.py`, replayed over a CPU run's allocations: `predicted_cuda_reserved_peak_bytes`
in a report): rounding to 512 bytes, 2 MiB / 20 MiB segments, blocks reused best-fit.

The figures are typical, not measured on each card here: a prediction built on them is marked
predicted and unvalidated (docs/gpu-validation.md lists what was measured on real cards).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import BadInput

GiB, MiB = 1024**3, 1024**2


@dataclass(frozen=True)
class Card:
    name: str
    memory_bytes: int  # total memory as CUDA reports it (a little under the marketing figure)
    context_bytes: int  # CUDA context and library kernels: on the device, never the allocator's

    @property
    def allocator_bytes(self) -> int:
        """What PyTorch's caching allocator can reserve on this card, one process alone on it."""
        return self.memory_bytes - self.context_bytes


def _card(name: str, gib: float, context_mib: int) -> Card:
    return Card(name, round(gib * GiB), context_mib * MiB)


# Memory: the totals PyTorch's OOM messages report for these cards. Context: ~300 MiB of CUDA
# context plus the kernels of cuBLAS/cuDNN loaded lazily (CUDA 12); more on newer architectures,
# whose libraries ship more kernels.
CARDS: dict[str, Card] = {c.name: c for c in (
    _card("T4-16GB", 14.75, 400),
    _card("V100-16GB", 15.78, 400),
    _card("V100-32GB", 31.75, 400),
    _card("A10G-24GB", 22.19, 450),
    _card("L4-24GB", 22.16, 450),
    _card("RTX3090-24GB", 23.69, 450),
    _card("RTX4090-24GB", 23.65, 450),
    _card("A100-40GB", 39.39, 500),
    _card("A100-80GB", 79.15, 500),
    _card("H100-80GB", 79.11, 600),
    _card("H200-141GB", 139.81, 600),
)}

ASSUMPTIONS = (
    "one process alone on the card (no other process, no NCCL buffers)",
    "the same dtypes and shapes as the CPU run (no autocast or TF32 paths that only CUDA takes)",
    "PyTorch's default caching allocator (no expandable_segments, no max_split_size_mb)",
    "the CUDA context and library kernels take the card's typical share, not measured here",
)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("nvidia", "").replace("geforce", ""))


def card(name: str) -> Card:
    """The card called `name` ("A100-40GB", "a100 40gb", "RTX 4090-24GB")."""
    wanted = _key(name)
    for known in CARDS.values():
        if _key(known.name) == wanted:
            return known
    raise BadInput(f"--gpu: unknown card {name!r}; known: {', '.join(CARDS)}")


@dataclass(frozen=True)
class CardFit:
    """How a run with `reserved_peak_bytes` reserved would sit on `card`: predicted, unvalidated."""

    card: Card
    reserved_peak_bytes: int

    @property
    def fits(self) -> bool:
        return self.reserved_peak_bytes <= self.card.allocator_bytes

    @property
    def headroom_bytes(self) -> int:
        return self.card.allocator_bytes - self.reserved_peak_bytes

    def to_dict(self) -> dict:
        return {**describe(self.card), "reserved_peak_bytes": self.reserved_peak_bytes, "fits": self.fits,
                "headroom_bytes": self.headroom_bytes}


def card_fit(which: Card | str, reserved_peak_bytes: int) -> CardFit:
    """Would a run whose caching allocator reserved `reserved_peak_bytes` (e.g. a report's
    `predicted_cuda_reserved_peak_bytes`) fit on the card?"""
    return CardFit(which if isinstance(which, Card) else card(which), reserved_peak_bytes)


def describe(c: Card) -> dict:
    """The card and the prediction's terms, for JSON: marked predicted and unvalidated."""
    return {"name": c.name, "memory_bytes": c.memory_bytes, "context_bytes": c.context_bytes,
            "allocator_bytes": c.allocator_bytes, "predicted": True, "validated": False,
            "assumptions": list(ASSUMPTIONS)}
