"""Output route: ``h_out <- h_out + d(h_out)``, after the module that produces ``h_out``."""

import operator

import torch.fx as fx


def insert_output(graph: fx.Graph, h_out: fx.Node, delta: str) -> fx.Node:
    """Output route (sequential-after): every user of ``h_out`` now sees ``h_out + d(h_out)``.

    ``delta`` is the qualified name of the delta module. Returns the node carrying the new ``h_out``.
    """
    with graph.inserting_after(h_out):
        d = graph.call_module(delta, (h_out,))
    with graph.inserting_after(d):
        new = graph.call_function(operator.add, (h_out, d))
    h_out.replace_all_uses_with(new, delete_user_cb=lambda user: user not in (d, new))
    return new
