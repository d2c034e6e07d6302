"""Timing helpers: interleaved rounds with per-round ratios, and compile time split into its parts."""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Stat:
    median: float
    p25: float
    p75: float
    n: int


def summarize(values: list[float]) -> Stat:
    if len(values) == 1:
        return Stat(values[0], values[0], values[0], 1)
    q = statistics.quantiles(values, n=4, method="inclusive")
    return Stat(statistics.median(values), q[0], q[2], len(values))


def interleaved(
    fns: dict[str, Callable[[], object]], *, rounds: int, calls: int, warmup: int = 3, seed: int = 0
) -> dict[str, list[float]]:
    """Seconds per call of each function, one sample per round; each round runs every function once,
    in a fresh random order, so drift (thermal, other load) hits all variants alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rng = random.Random(seed)
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(rounds):
        rng.shuffle(names)
        gc.collect()
        gc.disable()  # a collection inside one variant's sample would charge it to that variant
        try:
            for name in names:
                fn = fns[name]
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                times[name].append((time.perf_counter() - t0) / calls)
        finally:
            gc.enable()
    return times


def per_round(times: dict[str, list[float]], num: str, den: str) -> list[float]:
    """``num / den`` in each round (both measured back to back, so the ratio cancels drift)."""
    return [a / b for a, b in zip(times[num], times[den], strict=True)]


# -- compile time and its parts ---------------------------------------------------------------------
@contextmanager
def timed_methods(parts: dict[str, tuple[type, str]]) -> Iterator[dict[str, float]]:
    """Wrap ``cls.method`` for each part (restored on exit) and accumulate the seconds spent in it.

    Nested calls of the same part are counted once (the outermost call).
    """
    spent = {name: 0.0 for name in parts}
    depth = {name: 0 for name in parts}
    originals = []
    for name, (cls, attr) in parts.items():
        original = cls.__dict__[attr]
        originals.append((cls, attr, original))

        def wrapper(*args, __orig=original, __name=name, **kwargs):
            depth[__name] += 1
            t0 = time.perf_counter()
            try:
                return __orig(*args, **kwargs)
            finally:
                depth[__name] -= 1
                if depth[__name] == 0:
                    spent[__name] += time.perf_counter() - t0

        setattr(cls, attr, wrapper)
    try:
        yield spent
    finally:
        for cls, attr, original in originals:
            setattr(cls, attr, original)
