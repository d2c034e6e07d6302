"""DDP and FSDP2 training on 2 CPU processes (gloo) gives what one process gives on the same global batch.

Each engine runs under torchrun (``worker.py``) for LoRA, Adapter, BitFit and prefix tuning, and LoRA under
``accelerate launch`` (``accelerate_worker.py``: prepare, a prepared DataLoader, accelerator.backward); this
process then trains the same model on the whole batch. Measured (3 SGD steps, a tiny BERT): the losses
agree to 1e-6 and the delta weights to 2e-7, while training moves them by 5e-4 to 5e-2; the tolerances
below are 1e-5 (losses) and 1e-6 + 1e-5 relative (weights). The checkpoint that ``fxdelta.save`` wrote on
every rank loads onto a fresh single-process backbone, which then computes rank 0's logits exactly.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

import fxdelta

import training
from launch import ACCELERATE, TORCHRUN, launch

WEIGHT_ATOL = 1e-6


def delta_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    _, tensors = fxdelta.delta_models(model)["task"].checkpoint_entry()
    return {k: v.clone() for k, v in tensors.items()}


def check_method(engine: str, method: str, out) -> None:
    reference = training.patched(method, engine)
    initial = delta_tensors(reference)
    ref_losses = training.train(reference)
    rank_losses = [json.loads((out / f"{method}-{rank}.json").read_text()) for rank in (0, 1)]
    losses = [sum(pair) / 2 for pair in zip(*rank_losses, strict=True)]  # equal halves: the global mean
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), atol=1e-5, rtol=0)

    saved = load_file(str(out / method / "delta.safetensors"))
    expected = delta_tensors(reference)
    assert saved.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(saved[key], value, atol=WEIGHT_ATOL, rtol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
    moved = max((expected[k] - initial[k]).abs().max().item() for k in expected)
    assert moved > 100 * WEIGHT_ATOL, f"{method} hardly trained ({moved}): the comparison would not see a missed update"

    fresh = training.backbone()
    fxdelta.load(fresh, out / method)
    with torch.no_grad():
        logits = fresh(input_ids=training.probe()).logits
        ref_logits = reference(input_ids=training.probe()).logits
    assert torch.equal(logits, load_file(str(out / f"{method}-out.safetensors"))["logits"])
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)


ENGINES = ["ddp", "fsdp-layer", "fsdp-whole"]


def test_two_ranks_train_like_one_process(tmp_path):
    launch(TORCHRUN, "worker.py", str(tmp_path), *ENGINES, cwd=tmp_path)  # one launch: a process start costs ~15 s
    failures = []
    for engine in ENGINES:
        for method in training.METHODS:
            try:
                check_method(engine, method, tmp_path / engine)
            except AssertionError as e:
                failures.append(f"{engine} / {method}: {e}")
    assert not failures, "\n\n".join(failures)
    said = (tmp_path / "fsdp-layer" / "prefix-mlp.txt").read_text()
    assert said.startswith("ConfigError:") and "reparameterize=False" in said, said
    for rank, expected in ((0, "is a file"), (1, "rank 0 could not write")):  # no rank is left waiting
        said = (tmp_path / "fsdp-whole" / f"failed-save-{rank}.txt").read_text()
        assert said.startswith("CheckpointError:") and expected in said, said


def test_accelerate_launch_trains_lora_like_one_process(tmp_path):
    launch(ACCELERATE, "accelerate_worker.py", str(tmp_path), cwd=tmp_path)
    check_method("accelerate", "lora", tmp_path)
