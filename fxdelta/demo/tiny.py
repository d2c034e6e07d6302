"""The tiny demo (``fxdelta-demo --tiny``): compile one delta onto a small BERT, train it, inspect, save, reload.

Runs offline in seconds with nothing but fxdelta's own dependencies: the "pre-trained" backbone is a
small BERT built from its config with fixed random weights, and the task is a toy one (is the first
token in the upper half of the vocabulary?), so everything shown is computed here and now. It shows
what the real demo (``fxdelta.demo.real``) does not print: the marked tree and a rewritten graph.

    fxdelta-demo --tiny [--steps 150] [--method lora|dora|adapter|bitfit|ia3|prefix|soft_prompt|...] [--out demo-output]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch

from fxdelta.methods.registry import METHODS

VOCAB, SEQ = 100, 12


def _backbone(seed: int = 0):
    import transformers

    torch.manual_seed(seed)  # the same seed stands for "the same pre-trained weights"
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config.num_labels = 2
    return transformers.BertForSequenceClassification(config).eval()


def _toy_batch(generator: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, VOCAB, (size, SEQ), generator=generator)  # (B, T)
    labels = (ids[:, 0] >= VOCAB // 2).long()  # (B,)
    return ids, labels


def _accuracy(model, ids: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(input_ids=ids).logits.argmax(-1) == labels).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    import fxdelta

    parser = argparse.ArgumentParser(prog="fxdelta-demo --tiny", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--method", choices=sorted(METHODS), default="lora")
    parser.add_argument("--out", default="demo-output", help="where the trimmed checkpoint is written")
    args = parser.parse_args(argv)
    console = Console()
    gen = torch.Generator().manual_seed(0)
    test_ids, test_labels = _toy_batch(gen, 256)

    console.rule("[bold]1. compile the delta onto the backbone")
    model = _backbone()
    method = METHODS[args.method]
    spec = {"delta_type": args.method, **method.small}  # settings for the small BERT (hidden 64)
    console.print(f"spec: {spec}  (default positions for the BERT family)")
    before = model(input_ids=test_ids).logits.detach()
    fxdelta.compile(model, spec)
    delta = next(iter(fxdelta.delta_models(model).values()))
    same = torch.equal(model(input_ids=test_ids).logits, before)
    console.print(
        f"{len(delta.targets)} modules patched; output unchanged at init: {same}"
        + ("" if method.identity_at_init else " (this method cannot start as an identity)")
    )
    delta.freeze_module(exclude=["deltas", "classifier"])  # train the delta and the new task head

    console.rule("[bold]2. train with an ordinary PyTorch loop")
    acc_before = _accuracy(model, test_ids, test_labels)
    optimizer = torch.optim.AdamW((p for p in model.parameters() if p.requires_grad), lr=1e-2)
    model.train()
    columns = (
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("train", total=args.steps, loss=float("nan"))
        for _ in range(args.steps):
            ids, labels = _toy_batch(gen, 32)
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            progress.update(task, advance=1, loss=loss.item())
    model.eval()
    console.print(f"held-out accuracy: {acc_before:.2%} before -> {_accuracy(model, test_ids, test_labels):.2%} after")

    console.rule("[bold]3. what changed")
    delta.log()
    first = delta.targets[0]
    console.print(f"\nthe rewritten graph that carries the delta on [bold]{first}[/bold]:")
    fxdelta.show_graph(model, first)

    console.rule("[bold]4. save the trimmed checkpoint, reload it onto a fresh backbone")
    out = Path(args.out)
    fxdelta.save(model, out)
    full = io.BytesIO()
    torch.save(_backbone().state_dict(), full)
    table = Table("file", "bytes")
    for f in sorted(out.iterdir()):
        table.add_row(str(f), f"{f.stat().st_size:,}")
    table.add_row("(the full backbone state_dict, for scale)", f"{len(full.getvalue()):,}")
    console.print(table)
    fresh = fxdelta.load(_backbone(), out)
    identical = torch.equal(fresh(input_ids=test_ids).logits, model(input_ids=test_ids).logits)
    console.print(f"fresh backbone + checkpoint reproduces the trained outputs exactly: [bold]{identical}[/bold]")
    return 0 if (same or not method.identity_at_init) and identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
