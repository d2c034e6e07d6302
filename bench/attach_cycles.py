"""Detach + attach cycles: time per cycle, and whether memory and torch.fx's caches stay flat.

    .venv/bin/python bench/attach_cycles.py [--cycles 10000] [--out bench/attach-cycles.md]

Two deltas (LoRA on q/v, adapters on attention and FFN outputs) on the 4-layer BERT of bench/run.py;
each cycle detaches the LoRA and attaches it again. Reported: the median cycle time (of 100-cycle
blocks), and the growth of the process RSS, of torch.fx's generated-source cache and of Python's
linecache between the end of a warm-up and the end of the run.
"""

from __future__ import annotations

import argparse
import gc
import linecache
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fxdelta

from workloads import ADAPTER, LORA, workloads

WARMUP = 200
BLOCK = 100


def rss_kb() -> int:
    """Resident set size of this process, in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fx_sources() -> int:
    from torch.fx.graph_module import _loader  # torch.fx keeps every generated forward's source here

    return len(_loader.eval_cache)


def snapshot() -> dict[str, int]:
    gc.collect()
    return {"rss_kb": rss_kb(), "fx_sources": fx_sources(), "linecache": len(linecache.cache)}


def run(cycles: int) -> dict[str, float]:
    work = next(w for w in workloads() if w.name == "bert-256")
    model = work.build()
    fxdelta.compile(model, [LORA, ADAPTER])
    lora = fxdelta.delta_models(model)["lora"]
    x = work.inputs()
    with torch.no_grad():
        expected = model(**x).last_hidden_state

    def cycle() -> None:
        lora.detach()
        lora.attach()

    for _ in range(WARMUP):
        cycle()
    start = snapshot()
    blocks = []
    for _ in range(cycles // BLOCK):
        t0 = time.perf_counter()
        for _ in range(BLOCK):
            cycle()
        blocks.append((time.perf_counter() - t0) / BLOCK)
    end = snapshot()
    with torch.no_grad():
        same = torch.equal(model(**x).last_hidden_state, expected)
    return {
        "cycles": cycles,
        "cycle_ms": 1000 * statistics.median(blocks),
        "rss_growth_kb": end["rss_kb"] - start["rss_kb"],
        "fx_sources_start": start["fx_sources"],
        "fx_sources_growth": end["fx_sources"] - start["fx_sources"],
        "linecache_growth": end["linecache"] - start["linecache"],
        "outputs_unchanged": same,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=None, help="write the result as a markdown table here")
    args = parser.parse_args(argv)
    r = run(args.cycles)
    lines = [
        "# Detach + attach cycles (bench/attach_cycles.py)",
        "",
        "BERT (hidden 256, 4 layers) with LoRA (q, v) and adapters (attention and FFN outputs); each cycle",
        f"detaches and re-attaches the LoRA. {WARMUP} warm-up cycles, then {r['cycles']:,} measured ones.",
        f"torch {torch.__version__}, Python {platform.python_version()}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| detach + attach, median of {BLOCK}-cycle blocks | {r['cycle_ms']:.2f} ms |",
        f"| RSS growth over the measured cycles | {r['rss_growth_kb']:,} KiB |",
        f"| torch.fx generated sources: after warm-up / growth "
        f"| {r['fx_sources_start']:,} / {r['fx_sources_growth']:,} |",
        f"| linecache entries, growth | {r['linecache_growth']:,} |",
        f"| outputs after the cycles equal those before | {r['outputs_unchanged']} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0 if r["outputs_unchanged"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
