"""The demo behind ``make demo``: fine-tune the pre-trained MiniLM on BBC News with LoRA, an adapter and
BitFit through the Hugging Face ``Trainer``, against a linear probe and full fine-tuning.

Prints a table (held-out accuracy, trainable parameters, checkpoint size, train time), writes it to
``<output-dir>/results.md``, plots accuracy against trainable parameters to
``<output-dir>/accuracy-vs-params.png``, and reloads each saved delta onto a fresh backbone to show
that it predicts exactly what the trained model did. Offline: model and articles come from PyPI packages.

    fxdelta-demo [--full] [--methods linear-probe,lora,adapter,bitfit,full] [--output-dir demo-output] [--seed 0]
    fxdelta-demo --tiny ...   # the offline toy demo on a random tiny BERT (fxdelta.demo.tiny)
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from pathlib import Path

from fxdelta.demo.data import Encoded, load_corpus, model_path
from fxdelta.demo.report import human_bytes, markdown, plot, table
from fxdelta.demo.runs import RUNS, Result, new_classifier, predict, train_one


@dataclass(frozen=True)
class Preset:
    train_per_topic: int | None  # None: every training article of the split (1,701 in all)
    test_per_topic: int | None  # None: every held-out article (426)
    max_length: int  # tokens per article: the headline and the first sentences
    epochs: float
    batch_size: int = 8


# The fast default: a few minutes for all five runs on 2 CPU cores (measured: see the README).
FAST = Preset(train_per_topic=30, test_per_topic=30, max_length=64, epochs=2)
FULL = Preset(train_per_topic=None, test_per_topic=None, max_length=128, epochs=3)


def _methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in RUNS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}: choose from {', '.join(RUNS)}")
    return names


def parse(argv: list[str] | None):
    about = "Fine-tune the pre-trained MiniLM on BBC News with deltas, a linear probe and full fine-tuning."
    parser = argparse.ArgumentParser(prog="fxdelta-demo", description=about, epilog="--tiny: the offline toy demo")
    parser.add_argument("--full", action="store_true", help="every article of the split, 128 tokens, 3 epochs")
    parser.add_argument("--train-per-topic", type=int, help=f"training articles a topic ({FAST.train_per_topic})")
    parser.add_argument("--test-per-topic", type=int, help=f"held-out articles a topic ({FAST.test_per_topic})")
    parser.add_argument("--max-length", type=int, help=f"tokens per article (default {FAST.max_length})")
    parser.add_argument("--epochs", type=float, help=f"(default {FAST.epochs:g})")
    parser.add_argument("--methods", type=_methods, default=list(RUNS), help=f"comma-separated, from {','.join(RUNS)}")
    parser.add_argument("--output-dir", type=Path, default=Path("demo-output"), help="checkpoints, table, plot")
    parser.add_argument("--seed", type=int, default=0, help="the split, the new head, the Trainer's shuffling")
    parser.add_argument("--threads", type=int, help="torch threads (default: 1 on a busy machine, else torch's own)")
    parser.add_argument("--tiny", action="store_true", help="the offline toy demo instead (see --tiny --help)")
    return parser.parse_args(argv)


def _threads(requested: int | None) -> str:
    """Set torch's intra-op threads and say why: on a machine whose load already fills its cores, threads
    only wait for each other (measured here: a MiniLM forward took 1.0-1.5 s on 1 thread, 2.5-5.8 s on 2)."""
    import torch

    cores, load = os.cpu_count() or 1, os.getloadavg()[0]
    if requested is None and load >= cores:
        requested = 1
        why = f"1 torch thread (load average {load:.1f} on {cores} cores; --threads to choose)"
    else:
        why = f"{requested or torch.get_num_threads()} torch threads"
    if requested is not None:
        torch.set_num_threads(requested)
    return why


def reload_check(result: Result, path: Path, num_labels: int, test_set, collator, batch_size: int, seed: int):
    """Attach the saved delta to a fresh backbone (whose new head has other random weights) and compare
    its held-out logits with the trained model's."""
    import fxdelta

    fresh = fxdelta.load(new_classifier(path, num_labels, seed=seed + 1), result.folder)
    logits = predict(fresh, test_set, collator, batch_size, desc=f"{result.name}: reloaded")
    same = int((logits.argmax(-1) == result.logits.argmax(-1)).sum())
    return same, (logits - result.logits).abs().max().item()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when transformers is imported: never ask the hub
    import transformers
    from rich.console import Console

    args = parse(argv)
    preset = FULL if args.full else FAST
    overrides = {k: getattr(args, k) for k in ("train_per_topic", "test_per_topic", "max_length", "epochs")}
    preset = replace(preset, **{k: v for k, v in overrides.items() if v is not None})
    console = Console(soft_wrap=True)  # long lines stay whole (in logs too)
    path = model_path()
    threads = _threads(args.threads)
    corpus = load_corpus(args.seed, train_per_topic=preset.train_per_topic, test_per_topic=preset.test_per_topic)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    train_set = Encoded(tokenizer, corpus.train, preset.max_length)
    test_set = Encoded(tokenizer, corpus.test, preset.max_length)
    collator = transformers.DataCollatorWithPadding(tokenizer)
    num_labels = len(corpus.topics)

    console.rule("[bold]fine-tune the pre-trained MiniLM-L6 on BBC News")
    console.print(
        f"{len(corpus.train)} training and {len(corpus.test)} held-out articles (seeded split, seed {args.seed}), "
        f"topics {', '.join(corpus.topics)}; the first {preset.max_length} tokens of each; {preset.epochs:g} epochs "
        f"of batch {preset.batch_size}; {threads}; model from {path}"
    )

    def make_model():
        return new_classifier(path, num_labels, args.seed)

    results: list[Result] = []
    for name in args.methods:
        run = RUNS[name]
        console.rule(f"[bold]{name}[/bold]: {run.note}, lr {run.learning_rate:g}")
        if len(results) == 0:
            console.print("(the task head is new: transformers reports it as MISSING from the checkpoint)")
        else:
            transformers.logging.set_verbosity_error()  # the same load report once is enough
        r = train_one(
            run, make_model, train_set, test_set, collator,
            out=args.output_dir, epochs=preset.epochs, batch_size=preset.batch_size, seed=args.seed,
        )  # fmt: skip
        console.print(
            f"{name}: held-out accuracy [bold]{r.accuracy:.1%}[/bold], {r.trainable:,} trainable parameters, "
            f"checkpoint {human_bytes(r.checkpoint_bytes)} in {r.folder}/"
        )
        results.append(r)
    transformers.logging.set_verbosity_error()

    ok = True
    deltas = [r for r in results if RUNS[r.name].spec is not None]
    if deltas:
        console.rule("[bold]reload each saved delta onto a fresh backbone")
    for r in deltas:
        same, diff = reload_check(r, path, num_labels, test_set, collator, 2 * preset.batch_size, args.seed)
        ok &= same == len(test_set) and diff == 0.0
        console.print(
            f"{r.name}: fxdelta.load(fresh MiniLM, {r.folder}/) predicts the same topic for "
            f"[bold]{same} of {len(test_set)}[/bold] held-out articles; max |logit difference| {diff:.3g}"
        )

    total = results[0].total if results else 0
    console.print()
    console.print(table(results, total, len(test_set)))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "results.md").write_text(markdown(results, total))
    title = f"MiniLM-L6 on BBC News ({len(corpus.train)} training articles, {preset.max_length} tokens)"
    figure = plot(results, args.output_dir / "accuracy-vs-params.png", title)
    console.print(f"table written to {args.output_dir / 'results.md'}; plot saved to [bold]{figure}[/bold]")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
