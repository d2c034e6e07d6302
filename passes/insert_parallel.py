"""Parallel route: ``h_out <- h_out + d(h_in)``, a new edge from a module's input to its output."""

import operator

import torch.fx as fx


def insert_parallel(
    graph: fx.Graph, h_in: fx.Node, h_out: fx.Node, delta: str, *, with_output: bool = False
) -> fx.Node:
    """Parallel route: every user of ``h_out`` now sees ``h_out + d(h_in)``.

    ``h_in`` may come from anywhere earlier in the graph (for a parallel adapter it is another
    module's input); ``delta`` is the qualified name of the delta module; ``with_output`` also
    hands it ``h_out`` (``d(h_in, h_out)``). ``h_in`` must come before ``h_out`` in the graph. Returns
    the node carrying the new ``h_out``; the graph is edited in place and not recompiled (see ``fxdelta.passes``).
    """
    with graph.inserting_after(h_out):
        d = graph.call_module(delta, (h_in, h_out) if with_output else (h_in,))
    with graph.inserting_after(d):
        new = graph.call_function(operator.add, (h_out, d))
    h_out.replace_all_uses_with(new, delete_user_cb=lambda user: user not in (d, new))
    return new
