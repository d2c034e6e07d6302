"""Trainable parameters of every method, with default positions and hyper-parameters, on
BERT-base-shaped and GPT-2-small-shaped models (random weights, built from their configs).

    .venv/bin/python bench/param_counts.py [--out bench/param-counts.md]

The counts are read off the delta models (``num_parameters()``), not computed from formulas;
the README puts them next to the formulas that give them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import transformers

import fxdelta
from fxdelta.methods.registry import METHODS as REGISTRY

METHODS = list(REGISTRY)  # every registered method, in registry order
MODELS = {
    "BERT-base (d 768, 12 layers, FFN 3072)": lambda: transformers.BertModel(transformers.BertConfig()),
    "GPT-2 small (d 768, 12 layers, FFN 3072)": lambda: transformers.GPT2Model(transformers.GPT2Config()),
}


def count(build, method: str, merged: bool = False) -> tuple[int, int, int]:
    """(delta parameters, patched modules, backbone parameters); ``merged``: after ``fold_reparameterization()``."""
    torch.manual_seed(0)
    model = build()
    backbone = sum(p.numel() for p in model.parameters())
    fxdelta.compile(model, {"delta_type": method})
    (handle,) = fxdelta.delta_models(model).values()
    if merged:
        handle.fold_reparameterization()
    return handle.num_parameters(), len(handle.targets), backbone


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(Path(__file__).with_name("param-counts.md")))
    args = parser.parse_args()
    lines = ["| method | " + " | ".join(MODELS) + " |", "|---" * (len(MODELS) + 1) + "|"]
    rows: dict[str, list[str]] = {m: [] for m in [*METHODS, "prefix (merged)"]}
    for build in MODELS.values():
        for method in [*METHODS, "prefix (merged)"]:
            params, targets, backbone = count(build, method.split()[0], merged="merged" in method)
            rows[method].append(f"{params:,} ({100 * params / backbone:.3f}%, {targets} modules)")
    lines += [f"| `{m}` | " + " | ".join(cells) + " |" for m, cells in rows.items()]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
