"""The collapsed model tree: repeated layers folded into one line, deltas and patched sites marked.

``Visualization(model).structure_graph()`` prints it (with ``rich``) and returns the ``rich`` tree.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fxdelta.compiler.state import BackboneState
from fxdelta.core.entries import DeltaContainer


def console(file: Any) -> Any:
    """A rich console writing to ``file`` (default: stdout)."""
    from rich.console import Console

    return Console(file=file, soft_wrap=True)


def _param_text(module: nn.Module, expand: bool) -> str:
    parts = []
    for name, p in module.named_parameters(recurse=False):
        shape = list(p.shape) if expand or p.dim() <= 2 else f"{p.dim()}d"
        style = "green" if p.requires_grad else "dim"
        parts.append(f"[{style}]{name}:{shape}[/{style}]")
    return " ".join(parts)


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


class Visualization:
    """Collapsed tree of ``model``'s modules: ``Visualization(model).structure_graph()``."""

    def __init__(self, plm: nn.Module) -> None:
        self.model = plm
        state = BackboneState.find(plm)
        self._sites = {} if state is None else {id(s.module): s.kind.value for s in state.sites}

    def _signature(self, module: nn.Module, memo: dict[int, Any]) -> Any:
        """What must be equal for two sibling subtrees to be folded into one line."""
        key = id(module)
        if key not in memo:
            memo[key] = (
                type(module).__name__,
                self._sites.get(key),
                tuple((n, tuple(p.shape), p.requires_grad) for n, p in module.named_parameters(recurse=False)),
                tuple((n, self._signature(c, memo)) for n, c in module.named_children()),
            )
        return memo[key]

    def _label(self, name: str, module: nn.Module, expand: bool) -> str:
        cls = type(module).__name__
        if isinstance(module, DeltaContainer):
            return f"[bold red]{name}[/bold red] [red]({', '.join(module.keys())})[/red]"
        text = f"[bold]{name}[/bold] [cyan]({cls})[/cyan]"
        site = self._sites.get(id(module))
        if site:
            text += f" [magenta]<{site}>[/magenta]"
        params = _param_text(module, expand)
        return f"{text} {params}" if params else text

    def _add_children(self, tree: Any, module: nn.Module, expand: bool, keep_non_params: bool, memo: dict) -> None:
        children = [
            (n, c)
            for n, c in module.named_children()
            if keep_non_params or _has_params(c) or isinstance(c, DeltaContainer)
        ]
        i = 0
        while i < len(children):
            name, child = children[i]
            j = i
            if name.isdigit():  # fold a run of identical numbered siblings: "0-11"
                sig = self._signature(child, memo)
                while (
                    j + 1 < len(children)
                    and children[j + 1][0].isdigit()
                    and self._signature(children[j + 1][1], memo) == sig
                ):
                    j += 1
            label = name if j == i else f"{name}-{children[j][0]}"
            branch = tree.add(self._label(label, child, expand))
            if isinstance(child, DeltaContainer):
                for delta_name, delta in child.items():
                    node = branch.add(
                        f"[red]{delta_name}[/red] [cyan]({type(delta).__name__})[/cyan] {_param_text(delta, expand)}"
                    )
                    self._add_children(node, delta, expand, keep_non_params, memo)
            else:
                self._add_children(branch, child, expand, keep_non_params, memo)
            i = j + 1

    def structure_graph(
        self,
        rootname: str = "root",
        expand_params: bool = False,
        keep_non_params: bool = False,
        printTree: bool = True,
        file: Any = None,
    ) -> Any:
        """Build (and by default print) the collapsed tree; returns the ``rich.tree.Tree``.

        Trainable parameters are green, frozen ones dim; ``deltas`` containers and patched
        modules (``<traced region>``, ``<opaque graph>``, ``<hooks>``) are marked.
        ``keep_non_params`` also lists modules without parameters (dropout, activations).
        """
        from rich.tree import Tree

        tree = Tree(f"[bold]{rootname}[/bold] [cyan]({type(self.model).__name__})[/cyan]")
        self._add_children(tree, self.model, expand_params, keep_non_params, {})
        if printTree:
            from rich.console import Console

            Console(file=file).print(tree, crop=False, overflow="fold")
        return tree
