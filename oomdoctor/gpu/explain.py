"""Read an out-of-memory message (or a log holding some) and say what it means and what to run next.

Contract: pure text in, plain data out; never raises on any text.
- `find_messages(text)` -> every known message in `text`, in order, as `OomMessage`s: PyTorch's
  CUDA/HIP allocator OOM in its three formats (>= 2.2: "GPU 0 has a total capacity of T of which F
  is free ... A is allocated by PyTorch, and R is reserved by PyTorch but unallocated"; 2.1: the same
  with "capacty" and a max_split_size_mb hint; <= 2.0: "(GPU 0; T total capacity; A already
  allocated; F free; R reserved in total by PyTorch)"), oomdoctor's simulated `--capacity` OOM, the
  MPS and CPU allocators' messages, CUDA library errors taken for memory trouble (cuBLAS/cuDNN
  status codes, device-side asserts, illegal memory accesses), and any other line that
  `oom.oom_family` calls an OOM. For the last one of a log, the traceback before it gives the
  failing line of user code and the script.
- `explain(message)` -> an `Explanation`: the numbers, whether it is a memory problem at all, the
  likely cause and the commands to run next.

Sizes in PyTorch's messages are binary whatever the label ("GB" in MPS messages is 1024**3 B), and
printed with two decimals, so derived numbers are good to about 0.01 of their unit.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import asdict, dataclass, field
from decimal import Decimal

from ..oom import oom_family
from ..sizes import format_bytes

GiB = 1024**3
CUDA_CONTEXT = 512 * 1024**2  # a CUDA context holds about 300-600 MiB outside PyTorch's allocator

_UNIT = {"bytes": 1, "b": 1, "kib": 1024, "kb": 1024, "mib": 1024**2, "mb": 1024**2,
         "gib": 1024**3, "gb": 1024**3, "tib": 1024**4, "tb": 1024**4}
_SIZE = r"\d{1,20}(?:\.\d{1,20})?\s?(?:bytes|B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)\b"


def _s(name: str) -> str:
    return f"(?P<{name}>{_SIZE})"


def _compile(pattern: str) -> re.Pattern[str]:
    # a space in a pattern is any run of whitespace: logs wrap long messages
    return re.compile(pattern.replace(" ", r"\s+"))


_BACKEND = r"(?P<backend>CUDA|HIP|XPU|MUSA|NPU|MTIA|CPU)"
_NEW = _compile(  # PyTorch >= 2.1, and oomdoctor's simulated capacity
    _BACKEND + r" out of memory(?P<simulated> \(simulated by oomdoctor --capacity\))?\. "
    r"Tried to allocate " + _s("requested") + r"\. (?:GPU|Device|NPU|XPU) (?P<device>[\w:]{1,20}) "
    r"has a total (?P<capacity_word>capacity|capacty) of " + _s("total") + " of which " + _s("free") + r" is free\. "
    r"(?P<procs>(?:(?:Including non-PyTorch memory, this process|Process \d{1,10}) has "
    + _SIZE + r" memory in use\. )*)"
    r"(?:" + _s("allowed") + " allowed; )?Of the allocated memory " + _s("allocated") + " is allocated by PyTorch, "
    r"(?:with " + _s("private_pools") + r" allocated in private pools \(e\.g\., \w{1,10} Graphs\), )?"
    r"and " + _s("unallocated") + r" is reserved by PyTorch but unallocated\.")
_OLD = _compile(  # PyTorch <= 2.0 (and "cached" instead of "reserved" before 1.4)
    _BACKEND + r" out of memory\. Tried to allocate " + _s("requested") + r" \((?:GPU|NPU|XPU) (?P<device>\d{1,4}); "
    + _s("total") + " total capacity; " + _s("allocated") + " already allocated; (?:" + _SIZE + " current active; )?"
    + _s("free") + " free; (?:" + _s("allowed") + " allowed; )?"
    + _s("reserved") + r" (?:reserved in total by PyTorch|cached)\)")
_MPS = _compile(
    r"MPS backend out of memory \(MPS allocated: " + _s("allocated") + "(?:, other allocations: " + _s("other") + ")?"
    r"(?:, max allowed: " + _s("allowed") + r")?\)(?:\. Tried to allocate " + _s("requested") + r" on \w{1,10} pool)?")
_CPU = _compile(
    r"DefaultCPUAllocator: (?:can't allocate memory|not enough memory): "
    r"you tried to allocate (?P<requested>\d{1,30}) bytes"
    r"(?:\.? Error code (?P<errno>\d{1,5}) \((?P<strerror>[^)\n]{0,80})\))?")
_PROCESS = re.compile(r"(?:(?P<self>this process)|Process (?P<pid>\d{1,10}))\s+has\s+" + _s("used"))
_TRIED = re.compile(r"Tried\s+to\s+allocate\s+" + _s("requested"))
_NAMED_OOM = re.compile(r"\b(CUDA|HIP|XPU|MPS|MUSA|NPU|MTIA|CPU)\b[^\n]{0,20}?out of memory", re.IGNORECASE)
_ALLOC_CONF = re.compile(r"(PYTORCH_\w{0,10}ALLOC_CONF)=expandable_segments")

# CUDA errors users take for memory trouble: (pattern, code, is it memory: "yes" | "no" | "maybe")
_ERRORS = [
    (re.compile(r"\b(?:CUDA|HIP) error: out of memory"), "cuda-error-out-of-memory", "yes"),
    (re.compile(r"CUBLAS_STATUS_ALLOC_FAILED"), "CUBLAS_STATUS_ALLOC_FAILED", "yes"),
    (re.compile(r"CUDNN_STATUS_ALLOC_FAILED"), "CUDNN_STATUS_ALLOC_FAILED", "yes"),
    (re.compile(r"CUDNN_STATUS_NOT_INIT\w{0,20}"), "CUDNN_STATUS_NOT_INITIALIZED", "maybe"),
    (re.compile(r"CUDNN_STATUS_NOT_SUPPORTED"), "CUDNN_STATUS_NOT_SUPPORTED", "maybe"),
    (re.compile(r"device-side assert triggered"), "device-side-assert", "no"),
    (re.compile(r"an illegal memory access was encountered"), "illegal-memory-access", "no"),
]
_FRAME = re.compile(r'File "(?P<file>[^"\n]{1,500})", line (?P<line>\d{1,9}), in (?P<function>[^\n]{1,200})')
_NOT_USER = ("site-packages", "dist-packages", "/lib/python", "\\lib\\", "<")


@dataclass
class OomMessage:
    """One message as parsed. Sizes in bytes; None where the message does not say."""

    kind: str  # "allocator-oom" | "simulated-oom" | "mps-oom" | "cpu-oom" | "cuda-error" | "oom"
    format: str  # "torch>=2.2" | "torch-2.1" | "torch<=2.0" | "oomdoctor" | "mps" | "cpu" | an error code | "other"
    backend: str  # "cuda", "hip", "mps", "cpu", ...
    text: str
    line: int = 1  # where it starts in the text searched (1-based)
    memory: str = "yes"  # is this a memory problem: "yes" | "no" | "maybe"
    device: str | None = None
    requested: int | None = None  # "Tried to allocate": the segment asked for, not the tensor
    total: int | None = None
    free: int | None = None
    allocated: int | None = None  # by PyTorch
    reserved_unallocated: int | None = None  # reserved by PyTorch but unallocated (cached)
    allowed: int | None = None  # set_per_process_memory_fraction, or MPS's high watermark
    private_pools: int | None = None  # allocated in CUDA graph pools (included in `allocated`)
    other_allocations: int | None = None  # MPS: the process's other Metal allocations
    this_process: int | None = None  # NVML: everything this process holds, non-PyTorch included
    processes: list[dict] = field(default_factory=list)  # other processes: {pid, bytes}
    location: dict | None = None  # from a traceback: {file, line, function}
    script: str | None = None  # the outermost user file of that traceback

    @property
    def reserved(self) -> int | None:
        if self.allocated is None or self.reserved_unallocated is None:
            return None
        return self.allocated + self.reserved_unallocated

    @property
    def outside_pytorch(self) -> int | None:
        """Device memory in use but not reserved by this process's PyTorch: the CUDA context of this
        process, other processes, libraries that allocate on their own."""
        if None in (self.total, self.free, self.reserved):
            return None
        return max(0, self.total - self.free - self.reserved)

    @property
    def other_processes(self) -> int | None:
        """Memory of other processes, when the message says what this process holds."""
        if None in (self.total, self.free, self.this_process):
            return None
        return max(0, self.total - self.free - self.this_process)

    def to_dict(self) -> dict:
        return {**asdict(self), "reserved": self.reserved, "outside_pytorch": self.outside_pytorch,
                "other_processes": self.other_processes}


@dataclass
class Explanation:
    """What a message means, as plain data for any renderer."""

    title: str
    memory: str  # "yes" | "no" | "maybe"
    # "too-large" | "memory-limit" | "fragmentation" | "other-process" | "size" (allocator messages),
    # "device-full" | "maybe-memory" | "not-memory" (CUDA errors), None (no numbers to judge by)
    cause: str | None
    facts: list[tuple[str, str]]  # (label, value) pairs, in reading order
    lines: list[str]  # the explanation, one sentence or two a line
    next: list[str]  # commands to run next, the most useful first


# -- finding messages ----------------------------------------------------------------------------
def find_messages(text: str) -> list[OomMessage]:
    """Every known message in `text`, in order of appearance. Linear in the size of the text
    (n log n in the number of messages): a log of 100,000 messages is read in seconds."""
    found: list[tuple[int, int, OomMessage]] = []
    for pattern, build in ((_NEW, _from_new), (_OLD, _from_old), (_MPS, _from_mps), (_CPU, _from_cpu)):
        for m in pattern.finditer(text):
            found.append((m.start(), m.end(), build(m)))
    # A CUDA error counts where no full message covers its line, and once per line.
    taken, error_lines = _Spans(found), set()
    for pattern, code, memory in _ERRORS:
        for m in pattern.finditer(text):
            start, end = _line_span(text, m.start())
            if start not in error_lines and not taken.overlaps(start, end):
                error_lines.add(start)
                found.append((start, end, OomMessage("cuda-error", code, "cuda", text[start:end].strip(), memory=memory)))
    taken, offset = _Spans(found), 0
    for line in text.splitlines(keepends=True):
        if oom_family(line) and not taken.overlaps(offset, offset + len(line)):
            found.append((offset, offset + len(line), _from_other_line(line.strip())))
        offset += len(line)
    found.sort(key=lambda f: f[0])
    line, counted = 1, 0
    for start, _end, message in found:
        line, counted = line + text.count("\n", counted, start), start
        message.line = line
    if found:
        _add_traceback(text, found[-1][0], found[-1][2])
    return [message for _start, _end, message in found]


def parse(text: str) -> OomMessage | None:
    """The last message in `text`, or None when it holds none."""
    messages = find_messages(text)
    return messages[-1] if messages else None


class _Spans:
    """Spans of text already taken, merged and sorted: does [start, end) overlap one? (log n)"""

    def __init__(self, spans: list[tuple[int, int, OomMessage]]):
        self.starts: list[int] = []
        self.ends: list[int] = []
        for start, end, _message in sorted(spans, key=lambda f: f[0]):
            if self.ends and start < self.ends[-1]:
                self.ends[-1] = max(self.ends[-1], end)
            else:
                self.starts.append(start)
                self.ends.append(end)

    def overlaps(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self.ends, start)  # the first span ending after `start`
        return i < len(self.starts) and self.starts[i] < end


def _line_span(text: str, position: int) -> tuple[int, int]:
    start = text.rfind("\n", 0, position) + 1
    end = text.find("\n", position)
    return start, (len(text) if end < 0 else end)


def _size(text: str | None) -> int | None:
    if not text:
        return None
    number, unit = re.match(r"([\d.]+)\s?(\w+)", text).groups()
    return int(Decimal(number) * _UNIT[unit.lower()])


def _sizes(m: re.Match[str], *names: str) -> dict[str, int | None]:
    return {name: _size(m.group(name)) for name in names}


def _from_new(m: re.Match[str]) -> OomMessage:
    simulated = bool(m.group("simulated"))
    fmt = "oomdoctor" if simulated else ("torch-2.1" if m.group("capacity_word") == "capacty" else "torch>=2.2")
    msg = OomMessage("simulated-oom" if simulated else "allocator-oom", fmt, m.group("backend").lower(), m.group(0),
                     device=m.group("device"),
                     **_sizes(m, "requested", "total", "free", "allocated", "allowed", "private_pools"),
                     reserved_unallocated=_size(m.group("unallocated")))
    for p in _PROCESS.finditer(m.group("procs")):
        if p.group("self"):
            msg.this_process = _size(p.group("used"))
        else:
            msg.processes.append({"pid": int(p.group("pid")), "bytes": _size(p.group("used"))})
    return msg


def _from_old(m: re.Match[str]) -> OomMessage:
    sizes = _sizes(m, "requested", "total", "allocated", "free", "allowed", "reserved")
    reserved = sizes.pop("reserved")
    return OomMessage("allocator-oom", "torch<=2.0", m.group("backend").lower(), m.group(0), device=m.group("device"),
                      reserved_unallocated=max(0, reserved - sizes["allocated"]), **sizes)


def _from_mps(m: re.Match[str]) -> OomMessage:
    sizes = _sizes(m, "allocated", "allowed", "requested")
    return OomMessage("mps-oom", "mps", "mps", m.group(0), other_allocations=_size(m.group("other")), **sizes)


def _from_cpu(m: re.Match[str]) -> OomMessage:
    return OomMessage("cpu-oom", "cpu", "cpu", m.group(0), requested=int(m.group("requested")))


def _from_other_line(line: str) -> OomMessage:
    named = _NAMED_OOM.search(line)
    tried = _TRIED.search(line)
    return OomMessage("oom", "other", named.group(1).lower() if named else "unknown", line,
                      requested=_size(tried.group("requested")) if tried else None)


def _add_traceback(text: str, position: int, message: OomMessage) -> None:
    """The failing user line and the script, from the traceback printed just before the message."""
    start = text.rfind("Traceback (most recent call last):", 0, position)
    if start < 0:
        return
    frames = [f for f in _FRAME.finditer(text, start, position)
              if not any(marker in f.group("file") for marker in _NOT_USER)]
    if frames:
        last = frames[-1]
        message.location = {"file": last.group("file"), "line": int(last.group("line")),
                            "function": last.group("function").strip()}
        message.script = frames[0].group("file")


# -- explaining ------------------------------------------------------------------------------------
def explain(msg: OomMessage) -> Explanation:
    if msg.kind in ("allocator-oom", "simulated-oom"):
        return _explain_allocator(msg)
    if msg.kind == "mps-oom":
        return _explain_mps(msg)
    if msg.kind == "cpu-oom":
        return _explain_cpu(msg)
    if msg.kind == "cuda-error":
        return _explain_error(msg)
    script = _script(msg)
    lines = ["This is an out-of-memory error, but its message carries no capacity numbers to analyse."]
    if msg.requested:
        lines.append(f"It asked for {format_bytes(msg.requested)}.")
    return Explanation(f"{msg.backend.upper()} out of memory" if msg.backend != "unknown" else "Out of memory",
                       "yes", None, _where(msg, [("Requested", _b(msg.requested))] if msg.requested else []),
                       lines, [f"oomdoctor run --json report.json {script}", "oomdoctor gpus"])


_VERSION = {"torch>=2.2": "PyTorch >= 2.2", "torch-2.1": "PyTorch 2.1", "torch<=2.0": "PyTorch <= 2.0",
            "oomdoctor": "simulated by oomdoctor --capacity"}


def _explain_allocator(m: OomMessage) -> Explanation:
    script = _script(m)
    facts = [("Tried to allocate", _b(m.requested)), ("Total capacity", _b(m.total))]
    if m.allowed is not None:
        facts.append(("Allowed to this process", _b(m.allowed)))
    facts += [("Free on the device", _b(m.free)), ("Allocated by PyTorch", _b(m.allocated)),
              ("Reserved but unallocated", _b(m.reserved_unallocated)), ("Reserved in total", _b(m.reserved))]
    if m.private_pools:
        facts.append(("Of which in CUDA graph pools", _b(m.private_pools)))
    facts.append(("Outside PyTorch's allocator", _b(m.outside_pytorch)))
    if m.this_process is not None:
        facts.append(("This process in all (NVML)", _b(m.this_process)))
    facts += [(f"Process {p['pid']}", _b(p["bytes"])) for p in m.processes]
    lines = [f"PyTorch asked the {'device' if m.kind == 'allocator-oom' else 'simulated device'} for a new "
             f"{_b(m.requested)} block and did not get it. That is the segment size, not always the "
             "tensor's: requests of 1-10 MiB take a 20 MiB segment, larger ones round up to 2 MiB."]
    cause, why, commands = _allocator_cause(m, script)
    lines += why
    title = f"{m.backend.upper()} out of memory ({_VERSION[m.format]})"
    return Explanation(title, "yes", cause, _where(m, facts), lines, commands)


def _allocator_cause(m: OomMessage, script: str) -> tuple[str, list[str], list[str]]:
    req, total, free = m.requested or 0, m.total or 0, m.free or 0
    unallocated, reserved = m.reserved_unallocated or 0, m.reserved or 0
    run = f"oomdoctor run --json report.json {script}"
    batch = f"oomdoctor batch --flag --batch-size {script}"
    if m.kind == "simulated-oom":
        return "size", [
            f"Live tensors ({_b(m.allocated)}) plus this request pass the capacity given to --capacity ({_b(total)})."
        ], [f"oomdoctor batch --flag --batch-size --capacity {_b(total).replace(' ', '')} {script}", run]
    if req > (m.allowed or total) > 0:
        return "too-large", [
            f"The one request is larger than the whole {'allowance' if m.allowed else 'device'} "
            f"({_b(m.allowed or total)}): no allocator setting or cache flush makes it fit. Find the "
            "operation that asks for it (a batch, sequence length or resolution too large, or a shape "
            "bug such as an unintended broadcast) and shrink or split it."], [run, batch]
    if m.allowed and reserved + req > m.allowed * 0.99:  # sizes are rounded to two decimals
        return "memory-limit", [
            f"This process is capped at {_b(m.allowed)} by torch.cuda.set_per_process_memory_fraction "
            f"(or oomdoctor run --capacity), and it already reserves {_b(reserved)}: the cap, not the "
            "device, is full."], [run, batch]
    # Fragmentation: the cached pieces add up to more than the request, and to enough of the device
    # that putting them together would change something.
    fragmented = unallocated >= req and unallocated >= 0.05 * (m.allowed or total)
    if fragmented:
        var = _alloc_conf(m)
        fix = (f"{var}=max_split_size_mb:128 python {script}" if m.format == "torch<=2.0"
               else f"{var}=expandable_segments:True python {script}")
        why = [f"PyTorch holds {_b(unallocated)} reserved but unallocated, more than the {_b(req)} asked "
               "for, yet in pieces too small for it: fragmentation. Free blocks inside partly used "
               "segments cannot be given back, so no block big enough can be made.",
               ("max_split_size_mb keeps the allocator from splitting large cached blocks" if m.format == "torch<=2.0"
                else "Expandable segments let the allocator map memory where it is needed instead of keeping "
                "fixed segments") + "; steady tensor sizes (padding to a few bucket lengths) also help."]
        if total and (m.allocated or 0) > 0.9 * total:
            why.append(f"Even so the device is nearly full ({_b(m.allocated)} of {_b(total)} allocated): "
                       "the next larger request will fail too unless the work gets smaller.")
        return "fragmentation", why, [fix, run]
    others = m.other_processes if m.other_processes is not None else max(0, (m.outside_pytorch or 0) - CUDA_CONTEXT)
    if others >= GiB and others + free >= req:
        who = (f"Other processes hold {_b(others)}" if m.other_processes is not None else
               f"{_b(m.outside_pytorch)} is in use outside PyTorch's allocator (the CUDA context takes "
               "300-600 MiB of it; the rest is most likely another process)")
        return "other-process", [
            f"{who}: without it the request would fit. Stop or move the other job (a second training run, "
            "a notebook kernel still holding the GPU, an inference server), or pick another GPU with "
            "CUDA_VISIBLE_DEVICES."], ["oomdoctor gpus", run]
    why = [f"PyTorch's live tensors take {_b(m.allocated)} of {_b(total)}, and what is left ({_b(free)} free "
           f"on the device, {_b(unallocated)} cached by PyTorch) holds no {_b(req)} block: the memory is "
           "really in use. Make the work smaller (batch size, sequence length, activation checkpointing, "
           "mixed precision) or find what is kept alive."]
    if req <= unallocated:
        why.append(f"Fragmentation plays a small part: {_b(unallocated)} is cached in pieces, more than asked "
                   f"for, so {_alloc_conf(m)}=expandable_segments:True may get this step through, but the device "
                   "stays nearly full.")
    if free >= req:
        why.append(f"The device reports {_b(free)} free now, more than asked for: memory was freed between "
                   "the failure and the report, or another process's use changed.")
    return "size", why, [run, batch]


def _alloc_conf(m: OomMessage) -> str:
    """The variable the message itself names (ROCm builds say PYTORCH_HIP_ALLOC_CONF)."""
    named = _ALLOC_CONF.search(m.text)
    return named.group(1) if named else "PYTORCH_CUDA_ALLOC_CONF"


def _explain_mps(m: OomMessage) -> Explanation:
    script = _script(m)
    facts = [("Tried to allocate", _b(m.requested)), ("Allocated by MPS", _b(m.allocated)),
             ("Other allocations", _b(m.other_allocations)), ("Max allowed", _b(m.allowed))]
    lines = ["Apple's MPS backend stops at a high watermark of the unified memory; this allocation "
             "would pass it."]
    if m.other_allocations and m.allocated and m.other_allocations > m.allocated:
        lines.append("Most of it is other allocations (cached buffers, the graph cache): "
                     "torch.mps.empty_cache() between phases may be enough.")
    lines.append("PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 lifts the limit, at the risk of swapping or "
                 "freezing the machine; a smaller batch is the safe fix.")
    return Explanation("MPS out of memory", "yes", "size", _where(m, [f for f in facts if f[1] != "-"]), lines,
                       [f"oomdoctor batch --flag --batch-size {script}", f"oomdoctor run --json report.json {script}"])


def _explain_cpu(m: OomMessage) -> Explanation:
    script = _script(m)
    facts = _where(m, [("Tried to allocate", _b(m.requested))])
    if m.requested is not None and m.requested >= 1024**4:
        return Explanation("CPU out of memory", "yes", "too-large", facts, [
            f"One tensor of {_b(m.requested)} is larger than the RAM of any machine: this is almost "
            "always a wrong shape (an unintended broadcast or outer product, unfold/im2col on a large "
            "input, a size read from the wrong dimension)."], [f"oomdoctor run --json report.json {script}"])
    return Explanation("CPU out of memory", "yes", "size", facts, [
        "The host ran out of RAM (the operating system refused the allocation). Other processes, "
        "DataLoader workers (each a copy of the dataset if it lives in Python objects) and tensors "
        "kept alive across steps all count."],
        [f"oomdoctor run --json report.json {script}", f"oomdoctor batch --flag --batch-size {script}"])


_ERROR_TEXT = {
    "cuda-error-out-of-memory": ("CUDA error: out of memory", "yes", [
        "The CUDA runtime itself could not allocate (creating a context, a library handle, or memory "
        "outside PyTorch's caching allocator): the device is full, often because of another process."],
        ["oomdoctor gpus", "oomdoctor run --json report.json {script}"]),
    "CUBLAS_STATUS_ALLOC_FAILED": ("cuBLAS could not allocate", "yes", [
        "cuBLAS failed to allocate its handle or workspace: the GPU was full when the first matrix "
        "product ran. It is a memory problem: another process holds the GPU, or PyTorch's cache "
        "filled it first."], ["oomdoctor gpus", "oomdoctor run --json report.json {script}"]),
    "CUDNN_STATUS_ALLOC_FAILED": ("cuDNN could not allocate", "yes", [
        "cuDNN could not get memory for its workspace: the GPU is full."],
        ["oomdoctor run --json report.json {script}", "oomdoctor gpus"]),
    "CUDNN_STATUS_NOT_INITIALIZED": ("cuDNN could not initialize", "maybe", [
        "Most often a memory problem in disguise: cuDNN creates its handle lazily, at the first "
        "convolution, and fails when the GPU is already full. Less often a cuDNN library that does "
        "not match the one PyTorch was built with."],
        ["oomdoctor gpus", "oomdoctor batch --flag --batch-size {script}",
         "python -c \"import torch; print(torch.backends.cudnn.version())\""]),
    "CUDNN_STATUS_NOT_SUPPORTED": ("cuDNN does not support this call", "maybe", [
        "Sometimes memory: with a large batch no convolution algorithm fits in the free memory. "
        "Sometimes not: a non-contiguous input or an unsupported shape or dtype. Halving the batch "
        "tells them apart; if it still fails, call .contiguous() on the input."],
        ["oomdoctor batch --flag --batch-size {script}"]),
    "device-side-assert": ("Device-side assert", "no", [
        "Not a memory problem: a kernel checked an index and it was out of range, most often a class "
        "label >= the number of classes (or negative) in a loss, or an embedding index >= its size. "
        "CUDA reports it late, at an unrelated line; rerun with CUDA_LAUNCH_BLOCKING=1 (or on the CPU) "
        "to get the real line."], ["CUDA_LAUNCH_BLOCKING=1 python {script}"]),
    "illegal-memory-access": ("Illegal memory access", "no", [
        "Not a lack of memory: a kernel read or wrote outside its buffers (a bug in a custom or "
        "third-party kernel, or a tensor used after its memory was reused by another stream). The "
        "CUDA context is now broken; rerun with CUDA_LAUNCH_BLOCKING=1 to find the kernel."],
        ["CUDA_LAUNCH_BLOCKING=1 python {script}", "compute-sanitizer python {script}"]),
}


def _explain_error(m: OomMessage) -> Explanation:
    title, memory, lines, commands = _ERROR_TEXT[m.format]
    script = _script(m)
    cause = {"yes": "device-full", "no": "not-memory", "maybe": "maybe-memory"}[memory]
    return Explanation(title, memory, cause, _where(m, []), list(lines),
                       [c.format(script=script) for c in commands])


def _where(m: OomMessage, facts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if m.location:
        facts = facts + [("Failed at", f"{m.location['file']}:{m.location['line']} in {m.location['function']}")]
    return facts


def _script(m: OomMessage) -> str:
    return m.script or "train.py"


def _b(n: int | None) -> str:
    return format_bytes(n)
