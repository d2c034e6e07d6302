"""How deltas are carried at run time: one file per kind of site, behind the ``Site`` protocol.

- ``base.py``: the ``Site`` protocol, ``SiteKind``, and ``HookedSite`` for sites made of hooks.
- ``graph.py``: a region's fx graph rewritten by the route passes, installed as its forward; ``codegen.py``
  lets equal graphs share generated code; ``guard.py`` re-plans when a traced region stops being bare.
- ``hooks.py``: the hook fallback for modules that cannot be a graph node.
- ``carrier.py``: carries one module's input to another module's deltas (routes spanning two modules).
- ``prefix.py``, ``prompt.py``: prefix tuning's and soft prompts' own sites.
- ``hf.py``: every use of transformers internals.
"""
