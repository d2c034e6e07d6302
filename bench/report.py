"""The results file: a header (date, versions, machine), one markdown table of every measure, notes."""

from __future__ import annotations

import datetime
import os
import platform
from dataclasses import dataclass

import torch
import transformers

from timing import Stat


@dataclass(frozen=True)
class Row:
    section: str  # forward | train step | compile | meta compile | context
    model: str
    measure: str
    unit: str  # "x" for ratios
    stat: Stat


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _peft_version() -> str:
    try:
        import peft
    except ImportError:
        return "no peft (the meta compile section is skipped)"
    return f"peft {peft.__version__}"


def load_average() -> float:
    return os.getloadavg()[0]


def machine_note() -> str:
    return (
        f"{_cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def _fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.3f}"
    if unit == "s":
        return f"{value:.3f}"
    return f"{value:.1f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| section | model | measure | median | spread (p25 – p75) | n |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        unit = "" if r.unit == "x" else f" {r.unit}"
        s = r.stat
        lines.append(
            f"| {r.section} | {r.model} | {r.measure} | {_fmt(s.median, r.unit)}{unit} | "
            f"{_fmt(s.p25, r.unit)} – {_fmt(s.p75, r.unit)} | {s.n} |"
        )
    return "\n".join(lines)


def document(rows: list[Row], settings: str, wall_seconds: float, quick: bool, loads: tuple[float, float]) -> str:
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    mode = "quick smoke run (`--quick`): too few rounds to trust" if quick else "full run"
    return f"""# fxdelta benchmark: the cost fxdelta adds

- date: {now}
- torch {torch.__version__}, transformers {transformers.__version__}, {_peft_version()}, fxdelta (this tree)
- machine: {machine_note()}; 1-min load average {loads[0]:.2f} at start, {loads[1]:.2f} at end
  (other processes on the machine make every number noisier; ratios are robust to slow drift, not to bursts)
- {mode}; {settings}; wall time {wall_seconds:.0f} s

Every ratio is measured inside this one run: each round times every variant once, back to back, in a
fresh random order; the ratio is taken per round; the table gives the median over rounds and the
quartiles. Ratios under 1.0 mean faster than the reference. Absolute times (section `context`) are
only there to read the ratios; they are not targets and differ across machines.

- `unpatched`: the backbone as built. `naive lora`: each LoRA target replaced by a hand-written
  wrapper module computing `base(x) + x A^T B^T * alpha / r` (the reference for what the delta itself costs).
- `lora`, `adapter`, `bitfit`: `fxdelta.compile` with the method's default positions (graph path).
  `lora hooks_only`: the same LoRA through the hook fallback. LoRA r=8, alpha=16, no dropout; the three
  LoRA variants hold the same (non-zero) weights and their outputs are checked to agree before timing.
- forward: `model.eval()` under `torch.no_grad()`. train step: `model.train()`, forward, `mean(h**2)`
  loss, backward, AdamW step on the LoRA parameters only (backbone frozen).
- `lora − naive, per patched module` (tiny models only): (lora time − naive time) / number of LoRA targets, per round.
- compile: `fxdelta.compile` on a freshly built backbone; parts: `observe` (FakeTensor forward recording
  call patterns), `plan` (tracing and validating regions), `install` (route passes + fx code generation);
  `other` is the rest (selection, building the delta modules). A warm-up compile before all measurements
  pays the process's one-time costs (lazy imports, FakeTensor set-up).
- meta compile: LoRA (r=8 on `q_proj` and `v_proj`: fxdelta's default positions for Llama, given to PEFT
  as `target_modules`) onto a Llama-70B-shaped `LlamaForCausalLM` (hidden 8192, 64 heads, 8 KV heads,
  MLP 28672, vocab 128256) built on the `meta` device with `llama-70b-<N>L` = N layers: `fxdelta.compile`
  against PEFT's `get_peft_model`, each on a fresh backbone (not timed), both in every round in a fresh
  random order (garbage collected before each sample, the collector off during it); `fxdelta / peft` is
  the ratio per round. Both are checked to patch the same 2N modules first.
- `*-256`: BERT/GPT-2/Llama base models (no LM head), hidden 256, 4 layers; `*-tiny`: the test zoo's
  configs (hidden 32, 2 layers, batch 2, seq 6) where per-call Python overhead dominates.
- Peak memory is not measured: CPU torch allocations are invisible to `tracemalloc`.

{table(rows)}
"""
