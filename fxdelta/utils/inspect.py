"""What an optimizer will train: parameter counts and hyper-parameters of its groups."""

from __future__ import annotations

from typing import Any

import torch


def inspect_optimizer_statistics(optimizer: torch.optim.Optimizer, verbose: bool = True) -> dict[str, Any]:
    """Counts of the parameters ``optimizer`` holds and how many of them train, per group and in total.

    Returns ``{"total_parameters", "trainable_parameters", "trainable_ratio", "param_groups": [...]}``;
    with a single group its hyper-parameters (``lr``, ``weight_decay``, ...) are at the top level too.
    ``verbose`` prints the result.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"inspect_optimizer_statistics takes a torch.optim.Optimizer, got {type(optimizer).__name__}")
    groups = []
    for group in optimizer.param_groups:
        params = group["params"]
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        stats: dict[str, Any] = {"total_parameters": total, "trainable_parameters": trainable}
        stats["trainable_ratio"] = 100.0 * trainable / total if total else 0.0
        stats.update((k, v) for k, v in group.items() if k != "params")
        groups.append(stats)
    total = sum(g["total_parameters"] for g in groups)
    trainable = sum(g["trainable_parameters"] for g in groups)
    out: dict[str, Any] = dict(groups[0]) if len(groups) == 1 else {}
    out.update(
        total_parameters=total,
        trainable_parameters=trainable,
        trainable_ratio=100.0 * trainable / total if total else 0.0,
        param_groups=groups,
    )
    if verbose:
        print(
            f"optimizer: {len(groups)} parameter group(s), {trainable:,} of {total:,} parameters trainable "
            f"({out['trainable_ratio']:.4f}%)"
        )
        for i, g in enumerate(groups):
            hyper = {k: v for k, v in g.items() if k not in ("total_parameters", "trainable_parameters")}
            print(f"  group {i}: {g['trainable_parameters']:,} / {g['total_parameters']:,} trainable; {hyper}")
    return out
