"""Output route: ``h_out <- h_out + d(h_out)``, after the module that produces ``h_out``."""

import torch.fx as fx

from fxdelta.passes.insert_parallel import insert_parallel


def insert_output(graph: fx.Graph, h_out: fx.Node, delta: str) -> fx.Node:
    """Output route (sequential-after): every user of ``h_out`` now sees ``h_out + d(h_out)``.

    The same edit as the parallel route with the delta reading ``h_out`` itself. ``delta`` is the
    qualified name of the delta module. Returns the node carrying the new ``h_out``; the graph is
    edited in place and not recompiled (see ``fxdelta.passes``).
    """
    return insert_parallel(graph, h_out, h_out, delta)
