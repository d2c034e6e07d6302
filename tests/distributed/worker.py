"""Run under ``torchrun --nproc_per_node 2``: train every method of training.METHODS under each engine named.

``worker.py FOLDER ENGINE...``: an ENGINE is ``ddp``, ``fsdp-layer`` (fully_shard on each BERT layer, then the
root) or ``fsdp-whole`` (fully_shard on the root only); one launch runs them all (starting a process costs
more than training). For each engine and method it writes into ``OUT = FOLDER/<engine>``: ``OUT/<method>/`` (the
``fxdelta.save`` folder, saved on every rank), ``OUT/<method>-<rank>.json`` (this rank's losses) and
``OUT/<method>-out.safetensors`` (rank 0: the trained model's logits on the probe input); and
``FOLDER/fsdp-layer/prefix-mlp.txt``, the error of a reparameterized prefix under per-layer shards, and
``FOLDER/fsdp-whole/failed-save-<rank>.txt``, what each rank raised when rank 0 could not write.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.fsdp import fully_shard

import fxdelta

import training  # tests/distributed, on PYTHONPATH (with tests/) as the test sets it


def wrap(engine, model):
    if engine == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    if engine == "fsdp-layer":
        for layer in training.layers(model):
            fully_shard(layer)
    fully_shard(model)
    return model


def split_prefix_mlp() -> str:
    """What a forward says when prefix tuning's MLP (in layer 0's shard) serves layer 1 too."""
    model = wrap("fsdp-layer", training.patched("prefix"))
    try:
        model(input_ids=training.probe())
    except fxdelta.FxDeltaError as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


def failed_save(model, folder: Path) -> str:
    """What each rank hears when rank 0 cannot write a sharded model's checkpoint (the target is a file)."""
    blocker = folder / "a-file"
    blocker.touch()
    try:
        fxdelta.save(model, blocker)
    except fxdelta.FxDeltaError as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


def main(folder: Path, engines: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for engine, method in ((e, m) for e in engines for m in training.METHODS):
        out = folder / engine
        out.mkdir(exist_ok=True)
        model = wrap(engine, training.patched(method, engine))
        losses = training.train(model, rank, world)
        fxdelta.save(model, out / method)  # on every rank: gathers the shards, rank 0 writes
        (out / f"{method}-{rank}.json").write_text(json.dumps(losses))
        with torch.no_grad():
            logits = model(input_ids=training.probe()).logits
        if rank == 0:
            save_file({"logits": logits.contiguous()}, str(out / f"{method}-out.safetensors"))
        if (engine, method) == ("fsdp-whole", "lora"):  # its deltas are DTensor shards
            (out / f"failed-save-{rank}.txt").write_text(failed_save(model, folder))
    if "fsdp-layer" in engines:
        (folder / "fsdp-layer" / "prefix-mlp.txt").write_text(split_prefix_mlp())
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
