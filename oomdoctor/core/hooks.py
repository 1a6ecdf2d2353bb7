"""Every hook a session puts into PyTorch, installed and removed in one place.

The cost rule: on a step that is not sampled, oomdoctor does a constant amount of Python work per
step and per top-level forward, never per op, per saved tensor or per module call:
- always on: the global optimizer step hooks (per `optimizer.step()`), a wrapper around
  `torch.autograd.backward` (per backward pass), and forward hooks on the root modules found so far
  (per top-level forward);
- on sampled steps only (`per_op(True)`): the ledger's dispatch mode (every op) and the global
  module forward hooks (every module call), which find the root modules and show inner ones;
- on the other steps, between root forwards only: one global forward pre-hook (the watch), which
  sees each top-level module call. A known root's call takes it out until the call returns (two
  dict operations per top-level forward: inner module calls never see it); a module first called
  at the top level on such a step (an evaluation every 20 steps running a model's submodules
  through its own methods, a VAE's decoder run every 10 steps) becomes a root there, as it would
  on a sampled step.
The same set on every device: sampling decides, not the device.

`torch.compile` compiles exactly what it compiles under python (core/compile.py). No saved-tensor
hooks: `torch.func` transforms refuse to run under them.

Hooks act on the thread that started the session only; what other threads do is counted and
reported as not watched.
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Protocol

import torch

from ..probes.ledger import Ledger, LedgerMode
from .compile import hide_from_dynamo, quiet_compile_warning


class StepLimitReached(BaseException):
    """Raised at a step boundary once `stop_after_steps` steps ran (`oomdoctor run --steps`).

    A BaseException so that the user's `except Exception` blocks let it through.
    """


class Listener(Protocol):
    """What the hooks report to (the session)."""

    def forward_start(self, module: torch.nn.Module, args: Any) -> None: ...
    def forward_end(self, module: torch.nn.Module, output: Any) -> None: ...
    def module_end(self, module: torch.nn.Module, output: Any) -> None: ...
    def optimizer_made(self, optimizer: torch.optim.Optimizer) -> None: ...
    def optimizer_pre(self, optimizer: torch.optim.Optimizer) -> None: ...
    def optimizer_post(self, optimizer: torch.optim.Optimizer) -> None: ...
    def backward_start(self, tensors: tuple) -> None: ...
    def backward_end(self) -> None: ...
    def backward_failed(self) -> None: ...
    def compiled(self) -> None: ...
    def warn(self, message: str) -> None: ...


class HookSet:
    def __init__(self, listener: Listener, ledger: Ledger, category_now: Callable[[], str]):
        self.listener = listener
        self.ledger = ledger
        self.category_now = category_now
        self.thread = threading.get_ident()
        self.callbacks = 0  # calls into oomdoctor from PyTorch: the cost that scales
        self.other_threads: dict[str, int] = {}  # what ran in threads that are not watched
        self.children = 0  # processes started while the session ran
        self.depth = 0  # module call depth on our thread
        self._handles: list[Any] = []
        self._global_handles: list[Any] = []
        self._roots: dict[int, tuple[Any, Any]] = {}  # id(root module) -> its two hook handles
        self._undo: list[Callable[[], None]] = []
        self._mode: LedgerMode | None = None
        self._global_handles_ever = False
        self._watch_id: int | None = None  # the watch's key in the global pre-hook table
        self._watch_pre: Callable[..., Any] | None = None
        self._watched: torch.nn.Module | None = None  # a known root whose call the watch took

    # -- install and remove --------------------------------------------------------------------
    def install(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        listener = self.listener
        self._handles.append(register_optimizer_step_pre_hook(
            self._guarded(lambda opt, args, kwargs: listener.optimizer_pre(opt), "optimizer step")))
        self._handles.append(register_optimizer_step_post_hook(
            self._guarded(lambda opt, args, kwargs: listener.optimizer_post(opt), "optimizer step")))
        self._wrap_backward()
        self._undo.append(hide_from_dynamo(self))
        self._count_children()
        self._keep_hooks_out_of_copies()
        self._see_optimizers_made()
        handle = torch.nn.modules.module.register_module_forward_pre_hook(self._on_watch_pre)
        self._watch_id, self._watch_pre = handle.id, self._on_watch_pre
        self._handles.append(handle)
        self._watch(self._mode is None and self.depth == 0)

    def remove(self) -> None:
        self.per_op(False, force=True)
        self._watch(False)
        for handle in self._handles + self._global_handles:
            handle.remove()
        for pre, post in self._roots.values():
            pre.remove()
            post.remove()
        self._handles.clear()
        self._global_handles.clear()
        self._roots.clear()
        for undo in reversed(self._undo):
            try:
                undo()
            except Exception as exc:
                self.listener.warn(f"could not remove a hook ({exc!r})")
        self._undo.clear()

    def on_remove(self, undo: Callable[[], None]) -> None:
        self._undo.append(undo)

    def _wrap_backward(self) -> None:
        original = torch.autograd.backward
        hooks = self

        def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            if not hooks._ours():
                return original(tensors, *args, **kwargs)
            hooks.callbacks += 1
            roots = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors)
            hooks._call(hooks.listener.backward_start, roots)
            try:
                result = original(tensors, *args, **kwargs)
            except BaseException:
                # A backward that raised ends no step: the failure belongs to the step it ran in.
                hooks._call(hooks.listener.backward_failed)
                raise
            hooks._call(hooks.listener.backward_end)
            return result

        backward.__wrapped__ = original  # type: ignore[attr-defined]
        torch.autograd.backward = backward

        def restore() -> None:
            if torch.autograd.backward is backward:
                torch.autograd.backward = original

        self._undo.append(restore)

    def _keep_hooks_out_of_copies(self) -> None:
        """`torch.save(model)`, `copy.deepcopy(model)` (an EMA teacher, a best-model copy) must
        not carry our root hooks: a module's pickled state leaves them out."""
        module_class = torch.nn.Module
        original = module_class.__getstate__
        roots = self._roots

        def __getstate__(module: torch.nn.Module) -> dict:
            state = original(module)
            handles = roots.get(id(module))
            if handles is None:
                return state
            ours = {handle.id for handle in handles}
            for name in ("_forward_pre_hooks", "_forward_hooks", "_forward_hooks_always_called"):
                table = state.get(name)
                if table and ours & table.keys():
                    state[name] = type(table)((k, v) for k, v in table.items() if k not in ours)
            return state

        module_class.__getstate__ = __getstate__  # type: ignore[method-assign]

        def restore() -> None:
            if module_class.__getstate__ is __getstate__:
                module_class.__getstate__ = original  # type: ignore[method-assign]

        self._undo.append(restore)

    def _see_optimizers_made(self) -> None:
        """An optimizer made while the session runs is known before it first steps: its
        parameters are parameters from then on (a layer trained later, an optimizer per layer)."""
        optimizer_class = torch.optim.Optimizer
        original = optimizer_class.__init__
        hooks = self

        @functools.wraps(original)
        def __init__(optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
            original(optimizer, *args, **kwargs)
            if hooks._ours():
                hooks._call(hooks.listener.optimizer_made, optimizer)

        optimizer_class.__init__ = __init__  # type: ignore[method-assign]

        def restore() -> None:
            if optimizer_class.__init__ is __init__:
                optimizer_class.__init__ = original  # type: ignore[method-assign]

        self._undo.append(restore)

    def _count_children(self) -> None:
        """Processes started from here (mp.spawn, Pool, DataLoader workers): work done there is
        not watched, which the report says when this process itself ran no step."""
        import multiprocessing.process as mpp

        original = mpp.BaseProcess.start
        hooks = self

        def start(process: Any) -> None:
            hooks.children += 1
            return original(process)

        mpp.BaseProcess.start = start  # type: ignore[method-assign]

        def restore() -> None:
            if mpp.BaseProcess.start is start:
                mpp.BaseProcess.start = original  # type: ignore[method-assign]

        self._undo.append(restore)

    def hook_entries(self) -> list[tuple[dict, int]]:
        """Where our module hooks live: (dict, key) pairs, global and on root modules."""
        mm = torch.nn.modules.module
        tables = [mm._global_forward_pre_hooks, mm._global_forward_hooks,
                  getattr(mm, "_global_forward_hooks_always_called", {})]
        entries = [(table, h.id) for h in self._global_handles for table in tables]
        if self._watch_id is not None:
            entries.append((mm._global_forward_pre_hooks, self._watch_id))
        for pre, post in self._roots.values():
            for handle in (pre, post):
                for ref in (handle.hooks_dict_ref, *handle.extra_dict_ref):
                    table = ref()
                    if table is not None:
                        entries.append((table, handle.id))
        return entries

    # -- the per-op view -----------------------------------------------------------------------
    @property
    def sampling(self) -> bool:
        return self._mode is not None

    def per_op(self, on: bool, force: bool = False) -> None:
        """Switch the per-op view (dispatch mode, global module hooks) on or off.

        The dispatch mode lives on a per-thread stack: switch only when ours is on top, never
        inside inference_mode, which restores the thread's whole dispatch key set when it exits.
        """
        if not force and torch.is_inference_mode_enabled():
            return
        if on and self._mode is None:
            self._watch(False)  # the global hooks see every call
            self._mode = LedgerMode(self.ledger, self.category_now)
            self._mode.__enter__()
            self._global_module_hooks(True)
        elif not on and self._mode is not None:
            from torch.utils._python_dispatch import _get_current_dispatch_mode

            if not force and _get_current_dispatch_mode() is not self._mode:
                return  # the user pushed a mode of their own above ours: keep both as they are
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)
            self._global_module_hooks(False)
            self._watch(self.depth == 0 and not force)

    def _global_module_hooks(self, on: bool) -> None:
        if not on:
            for handle in self._global_handles:
                handle.remove()
            self._global_handles.clear()
            return
        mm = torch.nn.modules.module
        if not self._global_handles_ever:
            self._global_handles_ever = True
            # Ours are the global hooks torch.compile(module) warns about; they see the compiled
            # module as the root and its inner model once, which is what the session wants.
            self._undo.append(quiet_compile_warning())
        self._global_handles.append(mm.register_module_forward_pre_hook(self._on_module_pre))
        try:
            self._global_handles.append(mm.register_module_forward_hook(self._on_module_post, always_call=True))
        except TypeError:  # PyTorch < 2.1: no always_call, depth may drift after an exception
            self._global_handles.append(mm.register_module_forward_hook(self._on_module_post))

    # -- the watch (steps not sampled) ---------------------------------------------------------
    def _watch(self, on: bool) -> None:
        """Put the watch into PyTorch's global pre-hook table or take it out: a dict operation,
        cheap enough for every top-level forward."""
        key = self._watch_id
        if key is None:
            return
        table = torch.nn.modules.module._global_forward_pre_hooks
        if on:
            table[key] = self._watch_pre
        else:
            table.pop(key, None)

    def _on_watch_pre(self, module: torch.nn.Module, args: Any) -> None:
        """A top-level module call on a step that is not sampled."""
        if self._global_handles or self.depth or not self._ours():
            return
        self.callbacks += 1
        self._watch(False)  # until this call returns: its inner module calls cost nothing
        handles = self._roots.get(id(module))
        if handles is not None and handles[1].id in module._forward_hooks:
            self._watched = module  # its own pre-hook comes next: this call is counted here
        else:  # new (or a dead root's id reused): its post-hook, added now, ends the call
            self._roots.pop(id(module), None)
            try:
                self._adopt_root(module)
            except Exception as exc:  # no post-hook to end the call: not watched
                self._watch(True)
                self.listener.warn(f"could not watch a {type(module).__name__} ({exc!r})")
                return
        self._call(self.listener.forward_start, module, args)
        self.depth += 1

    # -- module calls --------------------------------------------------------------------------
    def _on_module_pre(self, module: torch.nn.Module, args: Any) -> None:
        """Every module call while sampling: finds root modules and keeps hooks on them."""
        if not self._ours():
            return
        self.callbacks += 1
        if self.depth == 0:
            self._adopt_root(module)
            self._call(self.listener.forward_start, module, args)
        self.depth += 1

    def _on_module_post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self.depth == 0 or not self._ours():
            return
        self.callbacks += 1
        self.depth -= 1
        if self.depth == 0:
            self._call(self.listener.forward_end, module, output)
        else:
            self._call(self.listener.module_end, module, output)

    def _adopt_root(self, module: torch.nn.Module) -> None:
        if id(module) in self._roots:
            return
        pre = module.register_forward_pre_hook(self._on_root_pre)
        try:
            post = module.register_forward_hook(self._on_root_post, always_call=True)
        except TypeError:
            post = module.register_forward_hook(self._on_root_post)
        self._roots[id(module)] = (pre, post)

    def _on_root_pre(self, module: torch.nn.Module, args: Any) -> None:
        """A root module's own hook: the one module call seen on steps that are not sampled."""
        if self._global_handles or not self._ours():
            return  # the global hooks see this call
        if self._watched is module:
            self._watched = None
            return  # the watch saw this call
        self.callbacks += 1
        if self.depth == 0:
            self._watch(False)
            self._call(self.listener.forward_start, module, args)
        self.depth += 1

    def _on_root_post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._global_handles or self.depth == 0 or not self._ours():
            return
        self.callbacks += 1
        self.depth -= 1
        if self.depth == 0:
            self._watched = None
            try:
                self._call(self.listener.forward_end, module, output)
            finally:
                self._watch(self._mode is None)

    # -- guards --------------------------------------------------------------------------------
    def _ours(self) -> bool:
        if threading.get_ident() == self.thread:
            return True
        # Another thread: not watched (steps belong to the thread that started the session).
        name = threading.current_thread().name
        if len(self.other_threads) < 16 or name in self.other_threads:
            self.other_threads[name] = self.other_threads.get(name, 0) + 1
        return False

    def _guarded(self, fn: Callable[..., Any], what: str) -> Callable[..., Any]:
        def hook(*args: Any) -> Any:
            if not self._ours():
                return None
            self.callbacks += 1
            return self._call(fn, *args)

        return hook

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Our own failure is a warning, never the user's exception. StepLimitReached and the
        simulated OOM are ours on purpose and go through."""
        try:
            return fn(*args)
        except (StepLimitReached, torch.OutOfMemoryError):
            raise
        except Exception as exc:
            self.listener.warn(f"internal error in {getattr(fn, '__name__', 'a hook')}: {exc!r}")
            return None
