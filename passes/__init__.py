"""Graph-rewrite passes, one per route (installed as ``fxdelta.passes``).

Each pass is a pure edit of an ``fx.Graph``: it inserts the delta's ``call_module`` node and the
``+`` that merges it, rewires the users, and returns the node that now carries the hidden state.
The caller recompiles.
"""

from fxdelta.passes.insert_in_out import insert_in_out
from fxdelta.passes.insert_input import insert_input
from fxdelta.passes.insert_output import insert_output
from fxdelta.passes.insert_parallel import insert_parallel

__all__ = ["insert_in_out", "insert_input", "insert_output", "insert_parallel"]
