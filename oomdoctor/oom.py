"""Is this exception an out-of-memory error? One place answers, for every backend.

`torch.OutOfMemoryError` is checked first (CUDA and oomdoctor's simulated capacity raise it); the
message families below are fallbacks for backends and libraries that raise plain RuntimeErrors.
Anything else is not an OOM and must never be treated as "does not fit".
"""
from __future__ import annotations

# Lower-case fragments, each a family of real messages.
_OOM_MESSAGES = (
    "cuda out of memory",  # CUDA caching allocator, before torch.OutOfMemoryError existed
    "cuda error: out of memory",  # raw CUDA runtime error (cudaErrorMemoryAllocation)
    "hip out of memory",  # ROCm
    "hip error: out of memory",
    "mps backend out of memory",  # Apple MPS
    "xpu out of memory",  # Intel XPU
    "cudnn_status_alloc_failed",  # cuDNN could not get its workspace
    "cublas_status_alloc_failed",  # cuBLAS handle/workspace allocation
    "can't allocate memory",  # CPU allocator: "DefaultCPUAllocator: can't allocate memory"
    "not enough memory",  # CPU allocator on Windows, and some XLA messages
    "out of memory",  # generic last resort, checked after the precise families
)

# cuDNN says NOT_SUPPORTED when it cannot find an algorithm that fits the remaining memory
# (large batch with convolutions); treated as OOM because halving the batch makes it go away.
_OOM_IF_CUDNN = ("cudnn_status_not_supported",)


def is_oom(exc: BaseException) -> bool:
    """True when `exc` means "this did not fit in memory"."""
    import torch  # here, not at the top: the message check alone must not load torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    return oom_family(str(exc)) is not None


def oom_family(message: str) -> str | None:
    """The message fragment that identifies an OOM message, or None when it is not one."""
    text = message.lower()
    for fragment in _OOM_MESSAGES + _OOM_IF_CUDNN:
        if fragment in text:
            return fragment
    return None
