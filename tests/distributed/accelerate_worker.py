"""Run under ``accelerate launch --cpu --num_processes 2``: LoRA training as an accelerate user writes it.

``accelerate_worker.py OUT``: the deltas are compiled before ``accelerator.prepare`` wraps the model (in DDP),
the prepared DataLoader hands each process its part of every global batch, and ``fxdelta.save`` runs on every
process after ``wait_for_everyone()``. Writes ``OUT/lora/`` (the checkpoint), ``OUT/lora-<rank>.json`` (this
process's losses) and ``OUT/lora-out.safetensors`` (process 0: the trained model's logits on the probe input).
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

import fxdelta

import training  # tests/distributed, on PYTHONPATH (with tests/) as the test sets it


def main(out: Path) -> None:
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    if accelerator.num_processes != 2 or torch.distributed.get_backend() != "gloo":
        raise SystemExit(f"expected 2 gloo processes, got {accelerator.num_processes} ({accelerator.distributed_type})")
    model = training.patched("lora")  # deltas first, then the wrapper
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=training.LR)
    rows = TensorDataset(torch.cat(training.batches()))  # global batch b is rows [4b, 4b + 4)
    per_process = training.BATCH // accelerator.num_processes
    loader = DataLoader(rows, batch_size=per_process, shuffle=False)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    losses = []
    for (ids,) in loader:
        loss = model(input_ids=ids, labels=ids).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    accelerator.wait_for_everyone()
    fxdelta.save(accelerator.unwrap_model(model), out / "lora")
    (out / f"lora-{accelerator.process_index}.json").write_text(json.dumps(losses))
    with torch.no_grad():
        logits = model(input_ids=training.probe()).logits
    if accelerator.is_main_process:
        save_file({"logits": logits.contiguous()}, str(out / "lora-out.safetensors"))
    accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
