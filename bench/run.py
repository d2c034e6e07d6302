"""Benchmark: the cost fxdelta adds, as ratios measured side by side in one run (CPU).

.venv/bin/python bench/run.py            # full run (a few minutes), writes bench/results.md
.venv/bin/python bench/run.py --quick    # ~30 s smoke run
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fxdelta
from fxdelta.compiler.plan import Planner
from fxdelta.compiler.state import BackboneState
from fxdelta.sites.base import HookedSite
from fxdelta.sites.graph import GraphSite

from meta_compile import bench_meta_compile
from report import Row, document, load_average, table
from timing import interleaved, per_round, summarize, timed_methods
from workloads import (
    ADAPTER,
    BITFIT,
    FORWARD_VARIANTS,
    LORA,
    TRAIN_VARIANTS,
    Workload,
    build_variants,
    check_lora_parity,
    output,
    trainable,
    workloads,
)


@dataclass(frozen=True)
class Settings:
    seq: int
    fwd_rounds: int  # rounds for the *-256 models (one call per sample)
    tiny_rounds: int
    tiny_calls: int  # calls per sample on tiny models (one call is ~1 ms)
    train_rounds: int
    compile_reps: int
    warmup: int  # untimed calls of each variant before its first round
    meta_layers: tuple[int, ...]  # depths of the Llama-70B-shaped meta backbone
    meta_reps: int

    def describe(self, batch: int) -> str:
        return (
            f"batch {batch}, seq {self.seq} (*-256); forward rounds {self.fwd_rounds} (*-256) / "
            f"{self.tiny_rounds} x {self.tiny_calls} calls (tiny); train rounds {self.train_rounds} "
            f"(x {self.tiny_calls} steps on tiny); "
            f"compile reps {self.compile_reps}; meta compile rounds {self.meta_reps} "
            f"(layers {', '.join(map(str, self.meta_layers))})"
        )


FULL = Settings(
    seq=128,
    fwd_rounds=30,
    tiny_rounds=40,
    tiny_calls=20,
    train_rounds=15,
    compile_reps=5,
    warmup=3,
    meta_layers=(20, 40, 80),
    meta_reps=7,
)
QUICK = Settings(
    seq=16,
    fwd_rounds=2,
    tiny_rounds=2,
    tiny_calls=2,
    train_rounds=2,
    compile_reps=1,
    warmup=1,
    meta_layers=(2, 4),
    meta_reps=1,
)
BATCH = 4
COMPILE_PARTS = {
    "observe": (BackboneState, "observe"),
    "plan": (Planner, "plan"),
    "install": (GraphSite, "install"),
    "install hooks": (HookedSite, "install"),
}


def bench_forward(work: Workload, variants: dict, inputs: dict, s: Settings) -> list[Row]:
    fns = {name: (lambda m=m: output(m, inputs)) for name, m in variants.items()}
    rounds, calls = (s.tiny_rounds, s.tiny_calls) if work.tiny else (s.fwd_rounds, 1)
    for m in variants.values():
        m.eval()
    with torch.no_grad():
        times = interleaved(fns, rounds=rounds, calls=calls, warmup=s.warmup)
    rows = [
        Row("forward", work.name, f"{n} / unpatched", "x", summarize(per_round(times, n, "unpatched")))
        for n in FORWARD_VARIANTS
        if n != "unpatched"
    ]
    rows += [
        Row("forward", work.name, f"{n} / naive lora", "x", summarize(per_round(times, n, "naive lora")))
        for n in ("lora", "lora hooks_only")
    ]
    if work.tiny:  # on the larger models this difference is smaller than the run-to-run noise
        n_targets = len(_targets(variants["lora"]))
        overhead = [(a - b) / n_targets * 1e6 for a, b in zip(times["lora"], times["naive lora"], strict=True)]
        rows.append(
            Row(
                "forward",
                work.name,
                f"lora − naive, per patched module ({n_targets} modules)",
                "µs",
                summarize(overhead),
            )
        )
    rows.append(Row("context", work.name, "unpatched forward", "ms", summarize([t * 1e3 for t in times["unpatched"]])))
    return rows


def bench_train(work: Workload, variants: dict, inputs: dict, s: Settings) -> list[Row]:
    fns = {}
    for name in TRAIN_VARIANTS:
        model = variants[name].train()
        opt = torch.optim.AdamW(trainable(model, name), lr=1e-4)

        def step(model=model, opt=opt) -> None:
            opt.zero_grad(set_to_none=True)
            output(model, inputs).float().pow(2).mean().backward()
            opt.step()

        fns[name] = step
    calls = s.tiny_calls if work.tiny else 1
    times = interleaved(fns, rounds=s.train_rounds, calls=calls, warmup=s.warmup)
    rows = [
        Row("train step", work.name, f"{n} / naive lora", "x", summarize(per_round(times, n, "naive lora")))
        for n in TRAIN_VARIANTS
        if n != "naive lora"
    ]
    rows.append(
        Row("context", work.name, "naive lora train step", "ms", summarize([t * 1e3 for t in times["naive lora"]]))
    )
    return rows


def bench_compile(work: Workload, s: Settings) -> list[Row]:
    rows = []
    for spec in (LORA, ADAPTER, BITFIT):
        totals, parts = [], {p: [] for p in ("observe", "plan", "install", "other")}
        for _ in range(s.compile_reps):
            model = work.build()  # building is not part of compiling
            with timed_methods(COMPILE_PARTS) as spent:
                t0 = time.perf_counter()
                fxdelta.compile(model, spec)
                totals.append(time.perf_counter() - t0)
            parts["observe"].append(spent["observe"])
            parts["plan"].append(spent["plan"])
            parts["install"].append(spent["install"] + spent["install hooks"])
            parts["other"].append(totals[-1] - sum(spent.values()))  # selection, building the delta modules
            del model
        method = spec["delta_type"]
        rows.append(Row("compile", work.name, f"{method}: total", "s", summarize(totals)))
        rows += [Row("compile", work.name, f"{method}: {p}", "s", summarize(v)) for p, v in parts.items()]
    return rows


def _targets(model) -> list[str]:
    return [e.target for h in fxdelta.delta_models(model).values() for e in h.entries]


def run(s: Settings, only: list[str] | None) -> list[Row]:
    works = [w for w in workloads(BATCH, s.seq) if not only or w.name in only]
    # Pay one-time costs (lazy imports, FakeTensor set-up) outside every measurement.
    if works:
        fxdelta.compile(works[0].build(), LORA)
    rows: list[Row] = []
    for work in works:
        t0 = time.perf_counter()
        variants = build_variants(work, FORWARD_VARIANTS)
        inputs = work.inputs()
        check_lora_parity(variants, inputs)
        rows += bench_forward(work, variants, inputs, s)
        rows += bench_train(work, variants, inputs, s)
        del variants
        gc.collect()
        rows += bench_compile(work, s)
        print(f"# {work.name} done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    if not only or "meta" in only:
        t0 = time.perf_counter()
        rows += bench_meta_compile(s.meta_layers, s.meta_reps)
        print(f"# meta compile done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    order = {"forward": 0, "train step": 1, "compile": 2, "meta compile": 3, "context": 4}
    return sorted(rows, key=lambda r: order[r.section])  # stable: models keep their order within a section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a ~30 s smoke run (numbers not meaningful)")
    parser.add_argument(
        "--out",
        type=Path,
        help="the markdown results file (default: bench/results.md, or bench/results-quick.md with --quick)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the machine's cores)")
    parser.add_argument(
        "--only", nargs="*", help="run only these workloads (e.g. bert-256 gpt2-tiny; meta: the meta compile)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # fixed so runs compare; 2 = the benchmark machine's cores
    settings = QUICK if args.quick else FULL
    out = args.out or HERE / ("results-quick.md" if args.quick else "results.md")
    t0, load0 = time.perf_counter(), load_average()
    rows = run(settings, args.only)
    wall = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(document(rows, settings.describe(BATCH), wall, args.quick, (load0, load_average())))
    print(table(rows))
    print(f"\nwrote {out} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
