"""The routes by which a delta joins a module's computation (DESIGN.md section 1)."""

import enum


class Route(enum.Enum):
    """Where a delta ``d`` reads from and writes to, around a module ``m``."""

    INPUT = "input"  # h_in <- h_in + d(h_in), then m
    OUTPUT = "output"  # h_out <- h_out + d(h_out)
    PARALLEL = "parallel"  # h_out <- h_out + d(h_in); h_in may be another module's input (a pair)
    IN_OUT = "in_out"  # h_out <- h_out + d(h_in, h_out): reweighting methods such as DoRA
    PREFIX = "prefix"  # K, V <- [P_k; K], [P_v; V] inside an attention, its mask widened (prefix tuning)
    PROMPT = "prompt"  # inputs_embeds <- [P; embed(ids)] where the ids are embedded (soft prompts)

    @property
    def on_edge(self) -> bool:
        """Whether the route is an edge around one module (a graph rewrite or a hook pair).

        The other routes work inside a module or across the input, so the methods that use them
        plan their own sites (``Method.plan_sites``).
        """
        return self in (Route.INPUT, Route.OUTPUT, Route.PARALLEL, Route.IN_OUT)
