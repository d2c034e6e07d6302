"""One training run of the real demo: build the classifier, set up what trains, train with the HF Trainer,
score it on the held-out split and save its checkpoint."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import fxdelta
from fxdelta.spec.heads import task_heads


@dataclass(frozen=True)
class Run:
    """How one row of the table is trained: ``spec`` is compiled with fxdelta (None: no delta, and
    ``train_backbone`` says whether the whole model trains or only the task head)."""

    name: str
    learning_rate: float
    spec: dict | None = None
    train_backbone: bool = False
    note: str = ""


# Learning rates: usual choices for each kind of run, set by hand after two short trial runs (not searched).
# The head is new in every run and trains at its run's rate; full fine-tuning needs a small one.
RUNS = {
    "linear-probe": Run("linear-probe", 5e-2, note="only the new task head trains"),
    "lora": Run("lora", 5e-3, {"delta_type": "lora", "lora_r": 8}, note="r 8 on attention q, v"),
    "adapter": Run(
        "adapter", 3e-3, {"delta_type": "adapter", "bottleneck_dim": 24}, note="24 wide, after attn.o, ff.w2"
    ),
    "bitfit": Run("bitfit", 1e-2, {"delta_type": "bitfit"}, note="a new bias on every projection and norm"),
    "full": Run("full", 1e-4, train_backbone=True, note="every parameter trains"),
}


@dataclass
class Result:
    name: str
    accuracy: float
    trainable: int
    checkpoint_bytes: int
    train_seconds: float
    folder: Path
    total: int  # every parameter of the model, trainable or not
    logits: torch.Tensor = field(repr=False)  # (N, classes) on the held-out split


def new_classifier(path: Path, num_labels: int, seed: int) -> nn.Module:
    """The pre-trained backbone with a new, seeded ``num_labels``-way head (the same head in every run)."""
    import transformers

    transformers.set_seed(seed)
    return transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)


def prepare(model: nn.Module, run: Run) -> nn.Module:
    """Make only what ``run`` trains trainable: compile its delta (fxdelta freezes the rest but the deltas
    and the task head), or freeze all but the head (linear probe), or nothing (full fine-tuning)."""
    if run.spec is not None:
        return fxdelta.compile(model, run.spec)
    if not run.train_backbone:
        heads = tuple(f"{h}." for h in task_heads(model))
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(heads))
    return model


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_checkpoint(trainer, folder: Path) -> None:
    """Write what the run trained to ``folder``: the one place the demo saves a model."""
    model = trainer.model
    if fxdelta.delta_models(model) or all(p.requires_grad for p in model.parameters()):
        # With deltas: the delta checkpoint (the deltas and the task head); full fine-tuning: every weight.
        trainer.save_model(str(folder))
    else:  # a linear probe: only the head changed, and the backbone is the public one
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
            str(folder / "head.safetensors"),
        )


# What the Trainer writes beside the model (the tokenizer, its own arguments): not the checkpoint's size.
_BESIDE = ("tokenizer*", "special_tokens_map.json", "vocab.txt", "training_args.bin")


def folder_bytes(folder: Path) -> int:
    """The bytes of what was trained and saved in ``folder`` (not the tokenizer the Trainer copies there)."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not any(f.match(p) for p in _BESIDE))


def predict(model: nn.Module, dataset, collator, batch_size: int, desc: str) -> torch.Tensor:
    """The logits of ``model`` on every item of ``dataset``, in order, in eval mode (no dropout)."""
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collator)
    model.eval()
    out = []
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, leave=False):
            batch.pop("labels", None)
            out.append(model(**batch).logits)
    return torch.cat(out)


def training_arguments(output_dir: str, *, learning_rate: float, epochs: float, batch_size: int, seed: int):
    import transformers

    return transformers.TrainingArguments(
        output_dir=output_dir,
        learning_rate=learning_rate,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        lr_scheduler_type="linear",
        weight_decay=0.01,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def train_one(
    run: Run,
    make_model: Callable[[], nn.Module],
    train_set,
    test_set,
    collator,
    *,
    out: Path,
    epochs: float,
    batch_size: int,
    seed: int,
) -> Result:
    import transformers

    model = prepare(make_model(), run)
    with tempfile.TemporaryDirectory(prefix="fxdelta-demo-trainer-") as scratch:
        args = training_arguments(
            scratch, learning_rate=run.learning_rate, epochs=epochs, batch_size=batch_size, seed=seed
        )
        trainer = transformers.Trainer(model=model, args=args, train_dataset=train_set, data_collator=collator)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        folder = out / run.name
        shutil.rmtree(folder, ignore_errors=True)  # a checkpoint of an earlier run must not add to this one
        save_checkpoint(trainer, folder)
    logits = predict(model, test_set, collator, 2 * batch_size, desc=f"{run.name}: held-out")
    labels = torch.tensor(test_set.labels)
    accuracy = (logits.argmax(-1) == labels).float().mean().item()
    total = sum(p.numel() for p in model.parameters())
    return Result(run.name, accuracy, trainable(model), folder_bytes(folder), seconds, folder, total, logits)
