"""Graph sites: a region's fx graph rewritten by the route passes, installed as its forward.

Two shapes of site share this code:
- a *region*: a module whose own forward traced (validated against eager); targets inside it
  are ``call_module`` nodes, the region itself may be a target too (its input and output);
- an *opaque* site: a single-tensor target wrapped as one ``call_module`` node (``original``,
  the module's forward as it was) in a tiny graph.

Each delta node calls ``fxdelta.core.precision.run`` (the delta in its own dtype, its result in the
hidden state's). The rewritten graph is compiled by fx into Python code and bound as an instance ``forward`` on
the user's own module object: its class, methods and state_dict keys do not change, and
uninstalling restores exactly the forward that was there before.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch.fx as fx
from torch import nn

from fxdelta.core.calls import forward_parameters
from fxdelta.core.entries import DELTA_NAMESPACE, Entry
from fxdelta.core.errors import FxDeltaError, StateError
from fxdelta.core.paths import relative
from fxdelta.core.precision import run
from fxdelta.core.routes import Route
from fxdelta.passes import insert_in_out, insert_input, insert_output, insert_parallel
from fxdelta.sites.base import SiteKind, entry_ids
from fxdelta.sites.codegen import Codes, graph_module

ORIGINAL = "original"  # the opaque node's name in an opaque site's graph


class _Original(nn.Module):
    """The opaque node: calls the patched module's forward as it was before fxdelta."""

    _forward: Callable[..., Any]

    def __init__(self, forward: Any, label: str) -> None:
        super().__init__()
        object.__setattr__(self, "_forward", forward)  # a bound method, not a submodule: no cycle in .modules()
        self._label = label

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._forward(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self._label}.forward"


class _Forwarder:
    """The backbone's forward while a region graph is installed on the backbone itself.

    A re-plan can start from the backbone's own pre-hooks (``fxdelta.sites.guard``), after torch has
    picked the forward to run: this one then runs whatever the backbone's forward is now.
    """

    def __init__(self, module: nn.Module, gm: fx.GraphModule) -> None:
        self.module, self.gm = module, gm

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        current = self.module.__dict__.get("forward")
        if current is self:
            return self.gm.forward(*args, **kwargs)
        if current is None:
            return type(self.module).forward(self.module, *args, **kwargs)
        return current(*args, **kwargs)


_LITERALS = (type(None), bool, int, str)


def opaque_supported(module: nn.Module) -> bool:
    """Whether fx can write ``module``'s forward signature as code: named parameters whose defaults
    are literals (not a function, a tensor, ``inf``), no ``*args``/``**kwargs``."""
    params = forward_parameters(module)
    if params is None:
        return False
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            return False
        d = p.default
        if not (d is p.empty or type(d) in _LITERALS or (type(d) is float and math.isfinite(d))):
            return False
    return True


def opaque_graph(module: nn.Module) -> fx.Graph:
    """``def forward(<module's parameters>): return self.original(<same>)``."""
    graph = fx.Graph()
    args: list[fx.Node] = []
    kwargs: dict[str, fx.node.Argument] = {}
    for p in forward_parameters(module) or ():
        node = graph.placeholder(p.name, default_value=p.default)  # Parameter.empty: no default
        if p.kind is p.KEYWORD_ONLY:
            kwargs[p.name] = node
        else:
            args.append(node)
    graph.output(graph.call_module(ORIGINAL, tuple(args), kwargs))
    return graph


def _in_own_dtype(graph: fx.Graph, add: fx.Node) -> None:
    """Turn the delta call a pass just made, ``add = h + delta(*xs)``, into ``h + run(delta, h, *xs)``
    (``fxdelta.core.precision.run``: the delta computes in its own dtype and returns ``h``'s)."""
    h, call = cast(tuple[fx.Node, fx.Node], add.args)
    with graph.inserting_before(call):
        module = graph.get_attr(cast(str, call.target))
        new = graph.call_function(run, (module, h, *call.args), name=call.name)
    call.replace_all_uses_with(new)
    graph.erase_node(call)


class GraphSite:
    """Deltas inside one region (or around one opaque module), as one rewritten fx graph.

    ``pristine`` is the region's traced graph (shared with the trace cache, never edited), or None
    for an opaque site. The rewritten GraphModule is built once, at the first install, and kept:
    a site reused across attach/detach generates no new code.
    """

    replaces_forward = True

    def __init__(
        self,
        path: str,
        module: nn.Module,
        pristine: fx.Graph | None,
        entries: Sequence[Entry],
        codes: Codes | None = None,
    ) -> None:
        self.path = path
        self._codes = codes  # code generated for equal graphs on this backbone (``codegen``)
        self.module = module
        self.opaque = pristine is None
        self.kind = SiteKind.OPAQUE_GRAPH if self.opaque else SiteKind.TRACED_REGION
        self.pristine = pristine
        self.entries = list(entries)
        self.gm: fx.GraphModule | None = None
        self._saved_forward: tuple[Any, ...] = ()  # (forward,) if the module had an instance forward
        self._forward: Any = None  # what install() put on the module
        self._installed = False
        self._built_over: Any = None

    @property
    def graph_module(self) -> fx.GraphModule | None:
        return self.gm

    @property
    def hook_ids(self) -> list[int]:
        return []  # it replaces the module's forward instead

    def build(self) -> fx.GraphModule:
        """Copy the pristine graph, run one route pass per delta (in order), compile."""
        graph = copy.deepcopy(self.pristine) if self.pristine is not None else opaque_graph(self.module)
        state: dict[fx.Node, list[fx.Node]] = {}  # target node -> [current h_in, current h_out]
        # Input-route deltas first: a parallel delta reads the input the module actually receives,
        # as in the hook fallback (whose pre-hook runs before the module and its forward hook).
        ordered = [e for e in self.entries if e.route is Route.INPUT] + [
            e for e in self.entries if e.route is not Route.INPUT
        ]

        def current(node: fx.Node) -> list[fx.Node]:
            return state.setdefault(node, self._initial(graph, node))

        for entry in ordered:
            delta = self._delta_name(entry)
            for node in self._nodes(graph, entry.target):
                cur = current(node)
                if entry.route is Route.INPUT:
                    cur[0] = insert_input(graph, cur[0], delta, node if node.op == "call_module" else None)
                elif entry.route is Route.OUTPUT:
                    cur[1] = insert_output(graph, cur[1], delta)
                else:
                    # A pair reads another module's input (the planner put both in this graph, source first).
                    h_in = cur[0] if entry.source is None else current(self._nodes(graph, entry.source)[0])[0]
                    insert = insert_in_out if entry.route is Route.IN_OUT else insert_parallel
                    cur[1] = insert(graph, h_in, cur[1], delta)
                _in_own_dtype(graph, cur[0] if entry.route is Route.INPUT else cur[1])
        graph.lint()
        return graph_module(self._root(), graph, type(self.module).__name__ + "Patched", self._codes)

    def _root(self) -> nn.Module:
        if not self.opaque:
            return self.module
        root = nn.Module()
        root.add_module(ORIGINAL, _Original(self._current_forward(), type(self.module).__name__))
        if DELTA_NAMESPACE in self.module._modules:
            root.add_module(DELTA_NAMESPACE, self.module._modules[DELTA_NAMESPACE])
        return root

    def _current_forward(self) -> Any:
        return self.module.__dict__.get("forward") or type(self.module).forward.__get__(self.module)

    def _delta_name(self, entry: Entry) -> str:
        rel = relative(entry.target, self.path)
        return f"{rel}.{DELTA_NAMESPACE}.{entry.name}" if rel else f"{DELTA_NAMESPACE}.{entry.name}"

    def _nodes(self, graph: fx.Graph, path: str) -> list[fx.Node]:
        """Every call of the module at ``path`` in the graph (a shared module gets its delta at each call)."""
        rel = ORIGINAL if self.opaque else relative(path, self.path)
        if not rel:
            return [next(n for n in graph.nodes if n.op == "output")]
        nodes = [n for n in graph.nodes if n.op == "call_module" and n.target == rel]
        if not nodes:  # the planner only puts targets the trace calls as modules here
            raise FxDeltaError(
                f"fxdelta: {path} is not a node of {self.path or 'the root'}'s graph (a planner bug; please report it)"
            )
        return nodes

    @staticmethod
    def _initial(graph: fx.Graph, node: fx.Node) -> list[fx.Node]:
        if node.op == "output":  # the region itself is the target: its input and output
            first = next(n for n in graph.nodes if n.op == "placeholder")
            return [first, cast(fx.Node, node.args[0])]
        h_in = node.args[0] if node.args else next(iter(node.kwargs.values()))
        return [cast(fx.Node, h_in), node]

    @property
    def key(self) -> tuple:
        """Equal keys mean the same generated code: such a site can stay installed across a re-plan."""
        graph = None if self.pristine is None else id(self.pristine)
        return (GraphSite, self.path, graph, entry_ids(self.entries))

    def install(self) -> None:
        if self._installed:
            return
        current = self.module.__dict__.get("forward")
        if self.gm is None or (self.opaque and current is not self._built_over):
            self._built_over = current  # the opaque node calls the forward found at build time
            self.gm = self.build()
        self._saved_forward = (self.module.__dict__["forward"],) if "forward" in self.module.__dict__ else ()
        self._forward = _Forwarder(self.module, self.gm) if not self.path else self.gm.forward
        doc = type(self.module).forward.__doc__  # help(module.forward) still shows the module's own
        if self.path:
            type(self.gm).forward.__doc__ = doc  # each GraphModule has a class (and forward) of its own
        else:
            self._forward.__doc__ = doc
        self.module.forward = self._forward
        self._installed = True

    def uninstall(self) -> None:
        if not self._installed:
            return
        # The very object install() put there (a deepcopy copies it once, for the module and for us).
        if self.module.__dict__.get("forward") is not self._forward:
            raise StateError(
                f"the forward of {self.path or 'the backbone'} was replaced by something else after fxdelta "
                f"patched it; undo that change first (detach in the reverse order of patching)"
            )
        if self._saved_forward:
            self.module.forward = self._saved_forward[0]
        else:
            del self.module.forward
        self._installed = False

    def describe(self) -> str:
        gm = self.gm or self.build()
        return f"{self.kind.value} on {self.path or '<root>'} ({type(self.module).__name__}):\n{gm.code.strip()}"
