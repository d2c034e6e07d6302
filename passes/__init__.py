"""Graph-rewrite passes, one per route (installed as ``fxdelta.passes``): ``insert_input.py`` (``h_in``),
``insert_output.py`` (``h_out``), ``insert_parallel.py`` (``h_in -> h_out``), ``insert_in_out.py`` (a delta
reading both ``h_in`` and ``h_out``).

The contract every pass keeps:
- takes an ``fx.Graph``, the node(s) carrying ``h_in``/``h_out``, and the qualified name of the
  delta module (``"<target>.deltas.<name>"`` relative to the graph's root), which need not exist yet;
- edits only that graph, in place: one ``call_module`` node for the delta and one ``operator.add``
  that merges it, with the users of the old value rewired to the sum; nothing else moves;
- returns the node that now carries the hidden state, so passes chain (several deltas on one module);
- leaves the graph valid (``graph.lint()`` passes) but its code stale: the caller builds the
  ``GraphModule`` (``fxdelta.sites.graph.GraphSite.build``), once, after the last pass.
"""

from fxdelta.passes.insert_in_out import insert_in_out
from fxdelta.passes.insert_input import insert_input
from fxdelta.passes.insert_output import insert_output
from fxdelta.passes.insert_parallel import insert_parallel

__all__ = ["insert_in_out", "insert_input", "insert_output", "insert_parallel"]
