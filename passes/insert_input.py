"""Input route: ``h_in <- h_in + d(h_in)``, before the module that consumes ``h_in``."""

import operator
from collections.abc import Callable

import torch.fx as fx


def insert_input(graph: fx.Graph, h_in: fx.Node, delta: str, consumer: fx.Node | None = None) -> fx.Node:
    """Input route (sequential-before): feed ``consumer`` with ``h_in + d(h_in)``.

    ``delta`` is the qualified name of the delta module. With a ``consumer`` only that node sees
    the new value (other users of ``h_in``, e.g. a residual, keep the original); without one,
    every user does (the region's own input; it must have at least one user). Returns the node
    carrying the new ``h_in``; the graph is edited in place and not recompiled (see ``fxdelta.passes``).
    """
    first_user = consumer or min(h_in.users, key=_position(graph))
    with graph.inserting_before(first_user):
        d = graph.call_module(delta, (h_in,))
        new = graph.call_function(operator.add, (h_in, d))
    if consumer is not None:
        consumer.replace_input_with(h_in, new)
    else:
        h_in.replace_all_uses_with(new, delete_user_cb=lambda user: user not in (d, new))
    return new


def _position(graph: fx.Graph) -> Callable[[fx.Node], int]:
    order = {node: i for i, node in enumerate(graph.nodes)}
    return order.__getitem__
