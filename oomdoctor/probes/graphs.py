"""Markers on autograd graphs where they are made: retained graphs and unused graphs.

A `Marker` goes in the `metadata` dict of a graph node (`grad_fn`), which lives exactly as long
as the node (nodes cannot be weak-referenced; markers can). Graphs are marked
- at the end of every root forward run with grad mode on, of a module with parameters
  (`forward_end`), with a pre-hook that notes when a backward pass reaches the node;
- at every backward root (`backward_start`): also code without any `nn.Module` (raw tensors,
  functional models) and a loss kept with `retain_graph=True`;
- at the outputs of inner modules on the steps the session samples (`module_end`): a forward
  hook that keeps a layer's output, or a layer whose buffer chains each step's graph onto the
  last, keeps no root output alive.
That is all the per-call cost (~2 us): no graph walks and no frame scans until something is
detected.

Retained graphs: whatever the mark, graphs are counted by when they were made. Two clocks:
- steps: each graph is stamped with the number of backward passes run before it; at a step's
  end, graphs of `MIN_OLD` different stamps at least `OLD_STEPS` steps' worth of backward
  passes old are alive (a leak from the first step is seen at the fifth);
- forwards, for graphs no backward reached (an evaluation loop, where no step ends): at a call
  site, `MIN_OLD` graphs older than the site's last `OLD` forwards are alive. Such a detection
  is provisional until the session stops: a gradient-accumulation window or an RL episode keeps
  graphs alive too, and then a backward reaches them; only graphs never back-propagated confirm it.
After a `gc.collect()` rules out graphs waiting in reference cycles, what keeps them alive is
searched for (attribution/). Event `retained-graph`, one per holder: holder, location, before,
after, method, container, backward (did backward run through the held graphs), clock ("step" |
"forward"), steps_alive (graphs alive, counted in the clock's unit), bytes (the holder's own
tensors, the tensors its graphs still save, and the nodes when backward ran through them: with
`retain_graph=True` all three), bytes_per_step, nodes, forward_site, detected_at, provisional.
Attribution runs again when the count doubles (at most `MAX_ATTRIBUTIONS` times).

Unused graphs, per call: a root forward's call site with the user's lines that led to it (one
`infer()` used by training and by evaluation is two calls). A forward whose graph was freed, or is
alive when the session stops, with no backward through it, is unused. Event `unused-graph`, one
per call: location (the forward's line, or where other calls back-propagate that line, the first
line of this call's path they do not share: computed when published, as the other calls may be
back-propagated only later; for a submodule run through its model's own methods, such as an
evaluation's `model.translate_lines(...)` reaching `self.emb_inp(inp)`, the innermost line past
its own, up to the first outside the model's methods, that all such calls leaving the model there
pass through and no back-propagated call does: computed when the session stops), module, eval
(the module was in eval mode at every call), forwards,
backwards, unused, line_backwards (backwards through forwards of the same line from other calls),
module_backwards (backwards through any forward of the module objects this call ran: none for a
target network or a frozen teacher), saved_bytes (what the call's first forward saved for backward).

Unused graphs inside a used forward, on sampled steps: a distiller's forward runs its teacher
through a method (`t_net.extract_feature(x)`, no `__call__` of the teacher) and uses only detached
features, so the teacher's inner modules build a graph that the distiller's back-propagated output
does not reach. Each inner module call is keyed by its path: the user's lines from the module call
up to the root module's forward. An inner graph freed without a backward through it counts as
unused once the root forward it ran in is back-propagated (an unused root forward is reported as
a call already). At the end, each unused path is reported at its outermost line that no
back-propagated path shares (the teacher's line in the distiller's forward, where `no_grad`
goes), paths meeting at one line as one `unused-graph` event with `inner=True`; forwards and
unused count root calls, saved_bytes the outputs of the inner modules run there in one call.
"""
from __future__ import annotations

import collections
import functools
import gc
import statistics
import sys
import weakref
from typing import Any

import torch

from ..diagnosis import attribution
from ..diagnosis.attribution import MARKER_KEY
from .graph_nodes import near_nodes, nested, one_per_line, output_nodes

OLD = 2  # a graph is old once this many forwards at its call site followed it
OLD_STEPS = 3  # ... or this many steps' worth of backward passes (a GAN's step runs two)
MIN_OLD = 3  # old graphs alive from this many steps (or forwards): something holds them
MAX_ATTRIBUTIONS = 8
MAX_PATH = 4  # user lines kept of an inner module call's path, outermost (the root's forward) first
MAX_USES = 8  # module objects counted per call site
MAX_OWNER_PATH = 8  # user lines kept of a call made through its owner's methods
NODE_BYTES = 970  # host memory per retained autograd node after backward (measured, CPU, 2.13)


class Marker:
    __slots__ = ("forward", "__weakref__")

    def __init__(self, forward: "_Forward"):
        self.forward = forward


class _Line:
    """The calls that reach one forward line, and the backwards through all of them."""

    __slots__ = ("backwards", "sites")

    def __init__(self) -> None:
        self.backwards = 0
        self.sites: list[_Site] = []


class _Use:
    """Backwards through the root forwards of one module object, from any call."""

    __slots__ = ("backwards",)

    def __init__(self) -> None:
        self.backwards = 0


class _Site:
    """A call of a model by the user's code, with counts over the session."""

    __slots__ = ("chain", "location", "line", "module", "eval", "forwards", "backwards", "unused", "saved_bytes",
                 "event", "pending", "attributed", "uses", "number", "path")

    def __init__(self, chain: tuple, line: _Line, module: torch.nn.Module, number: int):
        self.chain = chain
        self.number = number  # calls in the order they first ran
        self.location = _location(chain[0])
        self.line = line
        line.sites.append(self)
        self.module = type(module).__name__
        self.eval = not module.training
        self.forwards = 0
        self.backwards = 0
        self.unused = 0  # graphs freed (or alive at the end) without a backward through them
        self.saved_bytes: int | None = None
        self.event: dict[str, Any] | None = None
        self.pending: list[_Forward] = []  # alive graphs no backward reached yet, oldest first
        self.attributed = 0  # len(pending) at the last attribution on the forward clock
        self.uses: list[_Use] = []  # the module objects called here
        # The user's lines from the call out through the methods of the modules that own the
        # called one, and the first line outside them (`_owner_path`): more than one line when a
        # submodule is run through its model's own methods.
        self.path: tuple = ()


class _Inner:
    """Inner module calls made along one path of the user's lines inside root forwards (sampled
    steps): `path` innermost first, each line (file, line, function, qualified name)."""

    __slots__ = ("path", "module", "eval", "backwards", "unused", "unused_bytes", "calls", "unused_calls")

    def __init__(self, path: tuple, module: torch.nn.Module):
        self.path = path
        self.module = type(module).__name__
        self.eval = not module.training
        self.backwards = 0
        self.unused = 0
        self.unused_bytes = 0
        self.calls: set[int] = set()  # serials of the root calls it ran in
        self.unused_calls: set[int] = set()


class _Forward:
    """One marked graph: a root forward's (with its site), a backward root's or an inner
    module's output (no site; `inner` on sampled steps, with the root forward it ran in)."""

    __slots__ = ("step", "site", "backward", "markers", "refs", "use", "inner", "root", "nbytes", "taken",
                 "dropped", "serial")

    def __init__(self, step: int, site: _Site | None, backward: bool = False):
        self.step = step
        self.site = site
        self.backward = backward
        self.markers = 0
        self.refs: list[weakref.ref] = []
        self.use: _Use | None = None
        self.inner: _Inner | None = None
        self.root: _Forward | None = None
        self.nbytes = 0
        self.taken = False  # its nodes were taken over by the root forward's marker
        self.dropped: list[_Forward] | None = None  # a root's inner graphs freed before it was reached
        self.serial = 0

    def reached(self, _grad_outputs: Any) -> None:
        """Node pre-hook: backward reached this graph."""
        if not self.backward:
            self.backward = True
            if self.site is not None:
                self.site.backwards += 1
                self.site.line.backwards += 1
                _discard(self.site.pending, self)
            if self.use is not None:
                self.use.backwards += 1
            if self.inner is not None:
                self.inner.backwards += 1
            if self.dropped:  # the root is back-propagated: its inner graphs freed before were unused
                for inner in self.dropped:
                    _unused_inner(inner, self)
                self.dropped = None


class GraphProbe:
    def __init__(self) -> None:
        self.session: Any = None
        self.active = False
        self.sites: dict[tuple, _Site] = {}
        self.lines: dict[tuple, _Line] = {}
        self.alive: dict[int, _Forward] = {}
        self.alive_by_step: dict[int, int] = {}  # step -> marked graphs of that step alive
        self.holders: dict[tuple[str | None, str], dict[str, Any]] = {}  # events by (holder, clock)
        self._provisional: dict[int, tuple[_Site, list[_Forward]]] = {}  # id(event) -> its site and graphs
        self._attributions = 0
        self._steps_at_attribution = 0
        self._next_check = 0
        self.uses: weakref.WeakKeyDictionary[torch.nn.Module, _Use] = weakref.WeakKeyDictionary()
        # Inner module calls, sampled steps only: by path, and those of the root call running now.
        self.inner: dict[tuple, _Inner] = {}
        self._root_caller: Any = None  # the frame that called the running root module (sampled steps)
        self._call_inner: list[_Forward] = []  # inner graphs of the running root call
        self._early: list[_Forward] = []  # ... freed without a backward before that call returned
        self._calls = 0
        # The steps' clock: graphs are stamped with the backward passes run before them, which
        # a probe sees as they happen (the session closes a step only at the next one's optimizer).
        self.backwards = 0
        self._deltas: collections.deque[int] = collections.deque(maxlen=5)  # backward passes per step, lately
        self._backwards_at_step_end = 0

    # -- probe protocol ------------------------------------------------------------------------
    def start(self, session: Any) -> None:
        self.session = session
        self.active = True

    def stop(self) -> None:
        timeline = self.session.timeline
        if self.active and timeline.exception is None:
            for forward in list(self.alive.values()):  # alive at the end, nobody back-propagated
                if not forward.backward and forward.site is not None:
                    forward.site.unused += 1
        owner_calls = self._owner_calls()
        for site in self.sites.values():
            if site.unused:
                self._publish_site(site, owner_calls.get(id(site)))
        self._publish_inner()
        for event in list(self.holders.values()):
            # Forward clock: confirmed only if no backward ever ran through the graphs nor through
            # any graph of their call site (a window or an episode cut short by Ctrl-C or an OOM).
            site, forwards = self._provisional.get(id(event), (None, []))
            if any(f.backward for f in forwards) or (site is not None and site.backwards):
                if event in timeline.events:
                    timeline.events.remove(event)
            else:
                event["provisional"] = False
        self.active = False

    def forward_start(self, session: Any, module: torch.nn.Module) -> None:
        """A root forward starts: on sampled steps, note the frame that called it, where the
        paths of its inner module calls end."""
        for f in self._call_inner:  # a root call that never ended (it raised): not judged
            f.root = _UNJUDGED
        self._root_caller = _first_user_frame() if getattr(session, "sampling", False) else None
        self._call_inner, self._early = [], []

    def forward_end(self, session: Any, module: torch.nn.Module, output: Any) -> None:
        inner, early = self._call_inner, self._early
        self._root_caller, self._call_inner, self._early = None, [], []
        for f in inner:  # judged with the root forward made below, or not at all
            f.root = _UNJUDGED
        if not torch.is_grad_enabled() or next(module.parameters(), None) is None:
            return  # loss modules and other parameter-less roots only continue a graph
        nodes = output_nodes(output, root=True)
        if not nodes:
            return
        chain = attribution.call_chain()
        if not chain:
            return
        site = self.sites.get(chain)
        if site is None:
            site = self.sites[chain] = _Site(chain, self.lines.setdefault(chain[0], _Line()), module, len(self.sites))
            site.path = _owner_path(module)  # once per call
        site.forwards += 1
        site.eval = site.eval and not module.training
        forward = self._mark(nodes, _Forward(self.backwards, site), hook=True)
        forward.use = self._use(module)
        if forward.use is not None and len(site.uses) < MAX_USES and all(u is not forward.use for u in site.uses):
            site.uses.append(forward.use)
        if inner:
            self._calls += 1
            forward.serial = self._calls
            for f in inner:
                f.root = forward
                f.inner.calls.add(forward.serial)
            forward.dropped = early or None
        site.pending.append(forward)
        if site.saved_bytes is None:  # once per call: what one of its graphs holds
            site.saved_bytes = attribution.walk_graph(nodes, budget=20_000).saved_bytes
        if site.event is not None:
            site.event["forwards"] = site.forwards
        self._check_forward_clock(site)

    def backward_start(self, session: Any, tensors: Any) -> None:
        """Before a backward pass: mark its roots (a loss kept after backward keeps them) and, on
        sampled steps, the nodes nearest to them (weights computed by hand in a functional
        model, carried from step to step)."""
        nodes = output_nodes(tuple(tensors))
        if getattr(session, "sampling", False):
            nodes = near_nodes(nodes)
        if nodes:
            self._mark(nodes, _Forward(self.backwards, None, backward=True), hook=False)
        self.backwards += 1

    def module_end(self, session: Any, module: torch.nn.Module, output: Any) -> None:
        """An inner module's forward returned, on a sampled step: mark its output, and note the
        path of the user's lines that called it."""
        if torch.is_grad_enabled():
            nodes = output_nodes(output)
            if nodes:
                forward = _Forward(self.backwards, None)
                caller = self._root_caller
                if caller is not None:
                    path = _inner_path(caller)
                    if path:
                        inner = self.inner.get(path)
                        if inner is None:
                            inner = self.inner[path] = _Inner(path, module)
                        inner.eval = inner.eval and not module.training
                        forward.inner = inner
                        forward.nbytes = _output_bytes(output)
                        self._call_inner.append(forward)
                self._mark(nodes, forward, hook=True)

    def _use(self, module: torch.nn.Module) -> _Use | None:
        try:
            use = self.uses.get(module)
            if use is None:
                use = self.uses[module] = _Use()
            return use
        except TypeError:  # a module that cannot be weakly referenced or hashed
            return None

    def _mark(self, nodes: list[Any], forward: _Forward, hook: bool) -> _Forward:
        for node in nodes:
            old = node.metadata.get(MARKER_KEY)
            if old is not None:  # a root forward takes over its last inner module's output
                old.forward.taken = True
            marker = Marker(forward)
            node.metadata[MARKER_KEY] = marker
            forward.refs.append(weakref.ref(marker, functools.partial(self._freed, forward)))
            if hook:
                node.register_prehook(forward.reached)
        forward.markers = len(nodes)
        self.alive[id(forward)] = forward
        self.alive_by_step[forward.step] = self.alive_by_step.get(forward.step, 0) + 1
        return forward

    def step_end(self, session: Any, step: Any) -> None:
        try:
            self._step_end(step.index)
        except Exception as exc:  # our failure must not end the user's step
            session._warn(f"internal error in the graph probe: {exc!r}")

    def _step_end(self, index: int) -> None:
        self._deltas.append(self.backwards - self._backwards_at_step_end)
        self._backwards_at_step_end = self.backwards
        if any(e["clock"] == "step" for e in self.holders.values()):
            self._follow(index)
        elif self.backwards >= self._next_check and self._old_steps() >= MIN_OLD:
            gc.collect()  # graphs in reference cycles wait for the collector: not held
            if self._old_steps() >= MIN_OLD:
                self._steps_at_attribution = self._old_steps()
                self._attribute(self._old(), "step", index)
            else:
                self._next_check = self.backwards + max(8, self.backwards)

    # -- unused graphs -------------------------------------------------------------------------
    def _freed(self, forward: _Forward, _ref: weakref.ref) -> None:
        """A marker died: when it was its forward's last, the forward's graph is gone."""
        try:
            forward.markers -= 1
            if forward.markers:
                return
            self.alive.pop(id(forward), None)
            left = self.alive_by_step.get(forward.step, 1) - 1
            if left:
                self.alive_by_step[forward.step] = left
            else:
                self.alive_by_step.pop(forward.step, None)
            site = forward.site
            if site is not None and not forward.backward and self.active:
                _discard(site.pending, forward)
                site.unused += 1
                self._publish_site(site)
            if forward.inner is not None and not forward.backward and not forward.taken and self.active:
                root = forward.root
                if root is None:  # freed inside the root call (a teacher's features, detached)
                    self._early.append(forward)
                elif root is _UNJUDGED:
                    pass
                elif root.backward:
                    _unused_inner(forward, root)
                else:  # judged when backward reaches the root; dropped with it otherwise
                    root.dropped = (root.dropped or []) + [forward]
        except Exception:  # called by the garbage collector anywhere: never raise
            pass

    def _publish_site(self, site: _Site, owner_call: dict[str, Any] | None = None) -> None:
        # The location is computed again each time: the calls that share its line may be
        # back-propagated only after this call's first graph was freed (a DQN's online network
        # is back-propagated after its target network's graph died at the end of loss()).
        location = owner_call or _own_call(site)
        if site.event is None:
            site.event = attribution.new_event(self.session.timeline, "unused-graph", location=location,
                                               module=site.module, call=site.number)
        site.event.update(location=location, eval=site.eval, forwards=site.forwards, backwards=site.backwards,
                          unused=site.unused, line_backwards=site.line.backwards - site.backwards,
                          module_backwards=sum(u.backwards for u in site.uses), saved_bytes=site.saved_bytes or 0)

    def _owner_calls(self) -> dict[int, dict[str, Any]]:
        """Where to report unused calls of submodules run through their model's own methods (an
        evaluation's `model.translate_lines(...)` -> `self.encode` -> `self.emb_inp(...)`, a VAE's
        `vae.decode(z)` -> `self.decoder(z)`), by id of the call: `no_grad` goes around the call
        into the model, not around the model's own line (which training may run too, through
        `model(...)`). Calls whose paths leave the model at one line are one group; each is
        reported at the innermost line of its path, past its own module call, that every call of
        the group passes through and no back-propagated call does (a root call's lines, or on
        sampled steps an inner module call's lines up to its root's forward): `compute_bleu`'s
        `model.translate_lines(...)`, where the encoder's and the decoder's calls meet; a
        generation loop's `self.forward(...)` inside the model's `generate_text`. Once, at the
        end: it looks at every call."""
        groups: dict[tuple, list[_Site]] = {}
        for site in self.sites.values():
            if len(site.path) > 1 and site.unused and not site.backwards:
                groups.setdefault(site.path[-1][:2], []).append(site)
        if not groups:
            return {}
        used = {frame[:2] for other in self.sites.values() if other.backwards for frame in other.chain}
        used.update(frame[:2] for inner in self.inner.values() if inner.backwards for frame in inner.path)
        found = {}
        for group in groups.values():
            common = set.intersection(*({frame[:2] for frame in site.path[1:]} - used for site in group))
            frame = next((f for f in group[0].path[1:] if f[:2] in common), None)
            if frame is not None:
                for site in group:
                    found[id(site)] = _location(frame)
        return found

    def _publish_inner(self) -> None:
        """One event per line where inner graphs of back-propagated root forwards went unused."""
        used = [inner.path for inner in self.inner.values() if inner.backwards]
        at: dict[tuple, list[tuple[_Inner, str]]] = {}
        for inner in self.inner.values():
            if inner.unused and not inner.backwards:
                depth = _diverging(inner.path, used)
                if depth is not None:
                    frame = inner.path[depth]
                    at.setdefault(frame[:3], []).append((inner, _called(inner, depth)))
        for frame, group in at.items():
            calls = set().union(*(inner.calls for inner, _ in group))
            unused = set().union(*(inner.unused_calls for inner, _ in group))
            module = max(group, key=lambda g: g[0].unused_bytes)[1]
            attribution.new_event(
                self.session.timeline, "unused-graph", location=_location(frame), module=module, inner=True,
                eval=all(inner.eval for inner, _ in group), forwards=len(calls), backwards=0, unused=len(unused),
                line_backwards=0, module_backwards=0,
                saved_bytes=sum(inner.unused_bytes for inner, _ in group) // max(1, len(unused)))

    # -- retained graphs -----------------------------------------------------------------------
    def _old_steps(self) -> int:
        """Backward passes (steps, or a GAN's halves) whose graphs are old and still alive."""
        return sum(1 for step in list(self.alive_by_step) if step <= self._old_stamp())

    def _old(self) -> list[_Forward]:
        return [f for f in list(self.alive.values()) if f.step <= self._old_stamp()]

    def _old_stamp(self) -> int:
        # Backward passes per step: 2 in a GAN, the micro-batches of gradient accumulation; the
        # median, as steps held back without an optimizer close all at once at the end.
        return self.backwards - OLD_STEPS * max(1, statistics.median_low(self._deltas or [1]))

    def _check_forward_clock(self, site: _Site) -> None:
        alive = len(site.pending)
        if alive < MIN_OLD + OLD or alive < 2 * site.attributed or self._attributions >= MAX_ATTRIBUTIONS:
            event = next((e for e in self.holders.values() if e.get("site_key") == id(site)), None)
            if event is not None and alive > event["steps_alive"]:  # keep the count current
                event["steps_alive"] = alive
                event["bytes"] = event["bytes_per_step"] * alive
            return
        site.attributed = alive
        # Young generations only: this check also fires for accumulation windows and RL
        # episodes, which a full collection (~0.3 s in a large process) would slow down.
        gc.collect(1)
        old = site.pending[:-OLD]
        if len(old) >= MIN_OLD:
            self._attribute(old, "forward", site.forwards, site)

    def _follow(self, index: int) -> None:
        """After detection on the step clock: keep the counts current, attribute again when they
        doubled."""
        steps = self._old_steps() if len(self.alive_by_step) < 4096 else len(self.alive_by_step)
        if steps >= 2 * self._steps_at_attribution and self._attributions < MAX_ATTRIBUTIONS:
            self._steps_at_attribution = steps
            self._attribute(self._old(), "step", index)
            return
        scale = steps / max(1, self._steps_at_attribution)
        for event in self.holders.values():
            if event["clock"] != "step":
                continue
            alive = min(steps, round(event["steps_attributed"] * scale))
            if alive > event["steps_alive"]:
                event["steps_alive"] = alive
                event["bytes"] = event["bytes_per_step"] * alive

    def _attribute(self, old_forwards: list[_Forward], clock: str, at: int, site: _Site | None = None) -> None:
        """Name what holds the old graphs and find the line that attaches them (expensive)."""
        self._attributions += 1
        old = {id(f) for f in old_forwards}

        def holds_old_graph(t: torch.Tensor) -> bool:
            if t.grad_fn is None:
                return False
            stats = attribution.walk_graph([t], want_bytes=False, stop=lambda m: id(m.forward) in old)
            return any(id(m.forward) in old for m in stats.markers)

        found = []
        for holder in attribution.find_holders(attribution.user_frames(), holds_old_graph):
            method = ".item()" if all(t.numel() == 1 for t in holder.tensors) else ".detach()"
            found.append((holder, attribution.all_tensors(holder), attribution.attach_statement(holder, method)))
        accumulating = [f for f in found if f[2] is not None and f[2].accumulating]
        if accumulating:
            found = one_per_line(accumulating)
        elif found:
            found = [max(found, key=lambda f: len(f[1]))]
        if not found and not self.holders:
            found = [(None, [], None)]  # held, but not from the user's frames: report it anyway
        for holder, tensors, attach in found:
            if attach is not None and (nested(holder) or attach.after == attach.before):
                attach.before = attach.after = None  # `rows.append({"loss": loss})`: no one-word fix
            self._record(holder, tensors, attach, old_forwards, clock, at, site)

    def _record(self, holder: Any, tensors: list[torch.Tensor], attach: Any, old_forwards: list[_Forward],
                clock: str, at: int, site: _Site | None) -> None:
        stats = attribution.walk_graph([t for t in tensors if t.grad_fn is not None],
                                       budget=attribution.NODE_BUDGET // 4)
        forwards = [m.forward for m in stats.markers if isinstance(m, Marker)] if holder is not None else old_forwards
        # Forward clock: root forwards only (the inner outputs marked are part of their graphs).
        held = len({f.step if clock == "step" else id(f) for f in forwards if clock == "step" or f.site}) \
            or len(old_forwards)
        backward = any(f.backward for f in forwards)
        own = sum({attribution.storage_id(t): t.untyped_storage().nbytes() for t in tensors}.values())
        # Saved tensors a backward freed are gone from the walk; with retain_graph=True they are
        # still there, on top of the nodes.
        kept = own + stats.saved_bytes + (stats.nodes * NODE_BYTES if backward else 0)
        sites = [f.site.location for f in forwards if f.site is not None]
        name = holder.name if holder is not None else None
        unnamed = self.holders.get((None, clock)) if name is not None else None
        if unnamed is not None:  # named at last: the anonymous report is superseded
            del self.holders[(None, clock)]
            if unnamed in self.session.timeline.events:
                self.session.timeline.events.remove(unnamed)
        event = self.holders.get((name, clock))
        if event is None:
            event = self.holders[(name, clock)] = attribution.new_event(
                self.session.timeline, "retained-graph", holder=name, clock=clock, detected_at=at, steps_alive=0,
                provisional=clock == "forward")
        if clock == "forward":
            event["site_key"] = id(site)
            self._provisional.setdefault(id(event), (site, []))[1].extend(old_forwards)
        event.update(
            location=None if attach is None else {
                "file": attach.file, "line": attach.line, "function": attach.function, "code": attach.code},
            before=None if attach is None else attach.before,
            after=None if attach is None else attach.after,
            method=None if attach is None else attach.method,
            container=bool(holder is not None and holder.container),
            backward=backward,
            forward_site=max(sites, key=sites.count) if sites else None,
            nodes=stats.nodes,
            steps_attributed=held,
            bytes_per_step=kept // max(1, held),
        )
        if held >= event["steps_alive"]:
            event["steps_alive"] = held
            event["bytes"] = kept


def _location(site: tuple[str, int, str]) -> dict[str, Any]:
    file, line, function = site
    return {"file": file, "line": line, "function": function, "code": attribution.source_line(file, line)}


def _own_call(site: _Site) -> dict[str, Any]:
    """The forward's line, or where its line is back-propagated from other calls (a shared
    `infer()`), the innermost line of this call that those calls do not share: where to put
    `no_grad`."""
    trained = [s.chain for s in site.line.sites if s.backwards and s is not site]
    for depth, frame in enumerate(site.chain):
        if all(len(chain) <= depth or chain[depth] != frame for chain in trained):
            return _location(frame)
    return site.location


_UNJUDGED = _Forward(0, None)  # the root of inner graphs whose root forward is not marked


def _first_user_frame() -> Any:
    frame = sys._getframe(2)
    while frame is not None and not attribution.is_user_file(frame.f_code.co_filename):
        frame = frame.f_back
    return frame


def _owner_path(module: torch.nn.Module) -> tuple:
    """The user's lines from a root module's call outward, innermost first, while each is a method
    of a module that owns the called one (its `self` has it as a child, or is the owner of the
    line before), and the first line that is not: `(decode_step, decode_inference,
    translate_lines, compute_bleu)` for a decoder cell run by `model.translate_lines(...)`."""
    frame: Any = sys._getframe(1)
    path = []
    owned = module
    while frame is not None and len(path) < MAX_OWNER_PATH:
        code = frame.f_code
        if attribution.is_user_file(code.co_filename):
            path.append((code.co_filename, frame.f_lineno, code.co_name))
            owner = frame.f_locals.get("self") if code.co_argcount and code.co_varnames[0] == "self" else None
            if not isinstance(owner, torch.nn.Module) or (
                    owner is not owned and all(child is not owned for child in owner._modules.values())):
                break
            owned = owner
        frame = frame.f_back
    return tuple(path)


def _inner_path(caller: Any) -> tuple:
    """The user's lines from an inner module's call up to the root module's forward (below
    `caller`, the frame that called the root module), innermost first; () when `caller` is not on
    the stack."""
    frame = sys._getframe(2)
    path = []
    while frame is not None and frame is not caller:
        code = frame.f_code
        if attribution.is_user_file(code.co_filename):
            path.append((code.co_filename, frame.f_lineno, code.co_name, code.co_qualname))
        frame = frame.f_back
    return tuple(path[-MAX_PATH:]) if frame is not None else ()


def _diverging(path: tuple, used: list[tuple]) -> int | None:
    """The index in `path` of its outermost line that no back-propagated path shares along with
    all the lines outside it (paths aligned at the root's forward); None if every line is shared."""
    for depth in range(len(path) - 1, -1, -1):
        tail = path[depth:]
        if not any(len(other) >= len(tail) and other[len(other) - len(tail):] == tail for other in used):
            return depth
    return None


def _called(inner: _Inner, depth: int) -> str:
    """What the line at `depth` of the path called: the class of the method it entered (the
    teacher's `extract_feature`), else the inner module itself."""
    if depth > 0:
        owner, _, _ = inner.path[depth - 1][3].rpartition(".")
        if owner and not owner.endswith(">"):
            return owner
    return inner.module


def _output_bytes(output: Any) -> int:
    """Bytes of the tensors a module returned that belong to a graph (its activations)."""
    total, seen, stack = 0, set(), [output]
    while stack and len(seen) < 16:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            if item.grad_fn is not None:
                storage = item.untyped_storage()
                if storage.data_ptr() not in seen:
                    seen.add(storage.data_ptr())
                    total += storage.nbytes()
        elif isinstance(item, (list, tuple)):
            stack.extend(item[:8])
        elif isinstance(item, dict):
            stack.extend(list(item.values())[:8])
    return total


def _unused_inner(forward: _Forward, root: _Forward) -> None:
    inner = forward.inner
    assert inner is not None
    inner.unused += 1
    inner.unused_bytes += forward.nbytes
    inner.unused_calls.add(root.serial)


def _discard(pending: list[_Forward], forward: _Forward) -> None:
    """Remove `forward` from a site's pending list (usually its oldest entry: cheap)."""
    for i, f in enumerate(pending):
        if f is forward:
            del pending[i]
            return
