"""What users read: the collapsed model tree (``tree.py``), the delta log (``log.py``), the rewritten
graphs (``graphs.py``). Plans before a compile and whole-model exports go here too.

fxdelta.inspect.graph_nodes(gm)   # a rewritten graph as rows
fxdelta.inspect.to_networkx(gm)   # as a networkx.DiGraph (networkx is imported on first use)
"""

from fxdelta.inspect.graphs import graph_nodes, to_networkx

__all__ = ["graph_nodes", "to_networkx"]
