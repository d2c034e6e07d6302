"""In-out route: ``h_out <- h_out + d(h_in, h_out)``, for deltas that reweight a module's output."""

import torch.fx as fx

from fxdelta.passes.insert_parallel import insert_parallel


def insert_in_out(graph: fx.Graph, h_in: fx.Node, h_out: fx.Node, delta: str) -> fx.Node:
    """In-out route: every user of ``h_out`` now sees ``h_out + d(h_in, h_out)``.

    The parallel edit with the delta also reading ``h_out`` (DoRA rescales the module's own output).
    ``delta`` is the qualified name of the delta module. Returns the node carrying the new ``h_out``;
    the graph is edited in place and not recompiled (see ``fxdelta.passes``).
    """
    return insert_parallel(graph, h_in, h_out, delta, with_output=True)
