"""`torch.compile` under oomdoctor compiles exactly what it compiles under python.

Two things would change it:
- a dispatch mode that dynamo sees makes it skip the frame for good: the ledger's mode declares
  `ignore_compile_internals` (probes/ledger.py), so dynamo traces as if it were not there and the
  compiled code's own allocations still pass through it at run time;
- module hooks (ours, global or on a root module) that dynamo sees are traced into the graph
  (graph breaks, extra frames, our code compiled): while dynamo compiles, they are taken out of
  its sight through its compile start and end callbacks, and put back when it is done.
"""
from __future__ import annotations

import functools
import sys
import warnings
from typing import TYPE_CHECKING, Any, Callable

import torch

if TYPE_CHECKING:
    from .hooks import HookSet

_GLOBAL_HOOKS_WARNING = r"Using `torch.compile\(module\)` when there are global hooks on modules"


def hide_from_dynamo(hooks: "HookSet") -> Callable[[], None]:
    """From dynamo's first compilation on, hide `hooks`' module hooks while it compiles. Dynamo is
    imported by `torch.compile`, which is why that is the place to learn it will compile.
    Returns what undoes it."""
    original = torch.compile
    undo: list[Callable[[], None]] = []

    def register() -> None:
        if not undo:
            undo.append(_register_callbacks(hooks))

    @functools.wraps(original)
    def compile(*args: Any, **kwargs: Any) -> Any:
        hooks._call(register)
        return original(*args, **kwargs)

    torch.compile = compile
    if "torch._dynamo" in sys.modules:
        register()

    def restore() -> None:
        if torch.compile is compile:
            torch.compile = original
        for step in undo:
            step()

    return restore


def _register_callbacks(hooks: "HookSet") -> Callable[[], None]:
    import torch._dynamo
    from torch._dynamo.callback import callback_handler

    from ..probes.ledger import LedgerMode

    # What TorchDispatchMode does for every mode at class creation (LedgerMode opts out, to keep
    # dynamo's import off runs that never compile): dynamo must never trace the mode's frame.
    raw = LedgerMode.__dict__["__torch_dispatch__"]
    if not hasattr(raw, "_torchdynamo_disable") and not getattr(raw, "__wrapped__", None):
        LedgerMode.__torch_dispatch__ = torch._dynamo.disable(raw, recursive=True)

    hidden: list[tuple[dict, int, Any]] = []

    def start(*args: Any) -> None:
        for table, key in hooks.hook_entries():
            if key in table:
                hidden.append((table, key, table.pop(key)))

    def put_back() -> None:
        while hidden:
            table, key, value = hidden.pop()
            table[key] = value

    def end(*args: Any) -> None:
        put_back()
        hooks._call(hooks.listener.compiled)  # the heap moved for the compiler, not the program

    callback_handler.register_start_callback(start)
    callback_handler.register_end_callback(end)

    def unregister() -> None:
        put_back()
        callback_handler.remove_start_callback(start)
        callback_handler.remove_end_callback(end)

    return unregister


def quiet_compile_warning() -> Callable[[], None]:
    """Ours are the global hooks `torch.compile(module)` warns about; they see the compiled module
    as the root and its inner model once, which is what the session wants. Returns the undo."""
    warnings.filterwarnings("ignore", message=_GLOBAL_HOOKS_WARNING)

    def forget() -> None:
        warnings.filters[:] = [f for f in warnings.filters
                               if f[1] is None or f[1].pattern != _GLOBAL_HOOKS_WARNING]

    return forget
