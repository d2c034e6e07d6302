"""Saving under faults: a crash at any point leaves the old checkpoint or the new one, never neither;
modes follow the umask; every write error is a CheckpointError naming the path."""

import importlib
import os
import shutil
import stat

import pytest
import torch

import fxdelta
from fxdelta import CheckpointError, LoraModel
from fxdelta.io import atomic, checkpoint

from zoo import ZOO


def _trained(seed: int, rank: int = 2):
    zm = ZOO["bert"]
    model = zm.build()
    handle = LoraModel(model, lora_r=rank)
    with torch.no_grad():
        for p in handle.parameters():
            p.normal_(generator=torch.Generator().manual_seed(seed))
    return zm, model


def _outputs_of(folder, zm):
    fresh = fxdelta.load(zm.build(), folder)
    with torch.no_grad():
        return zm.run(fresh, zm.inputs())


class _Crash(Exception):
    pass


# Every step a save takes on disk: a crash (here, an exception) can come before any of them.
_STEPS = [
    ("safetensors.torch", "save_file"),  # the tensors file, in the staging folder
    ("pathlib", "Path.write_text"),  # the config file
    ("fxdelta.io.atomic", "_settle"),  # modes and fsync
    ("fxdelta.io.atomic", "_exchange"),  # the swap
    ("os", "rename"),  # the swap, where renameat2 is missing
    ("shutil", "rmtree"),  # removing the old contents
    ("fxdelta.io.atomic", "_fsync"),
]


@pytest.mark.parametrize("step", range(len(_STEPS)))
@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "rename-aside"])
def test_a_crash_at_any_step_leaves_the_old_or_the_new_checkpoint(tmp_path, monkeypatch, step, fallback):
    zm, old_model = _trained(seed=1)
    folder = tmp_path / "ckpt"
    fxdelta.save(old_model, folder)
    old = _outputs_of(folder, zm)
    _, new_model = _trained(seed=2, rank=4)  # another shape: half of each would not load
    if fallback:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    module, name = _STEPS[step]
    owner = importlib.import_module(module)
    *path, name = name.split(".")
    for attr in path:
        owner = getattr(owner, attr)

    def crash(*args, **kwargs):
        raise _Crash(name)

    with monkeypatch.context() as patched:
        patched.setattr(owner, name, crash)
        try:
            fxdelta.save(new_model, folder)
        except (_Crash, CheckpointError):
            pass
    got = _outputs_of(folder, zm)  # loads: the folder is a whole checkpoint, old or new
    with torch.no_grad():
        new = zm.run(new_model, zm.inputs())
    assert torch.equal(got, old) or torch.equal(got, new)


def test_a_crash_between_the_two_renames_names_the_moved_checkpoint(tmp_path, monkeypatch):
    zm, model = _trained(seed=1)
    folder = tmp_path / "ckpt"
    fxdelta.save(model, folder)
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def rename(src, dst):
        if str(src).startswith(str(tmp_path / ".ckpt.tmp-")):
            raise SystemExit("killed")  # as if the process died right after moving the old folder aside
        return real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(SystemExit):
        fxdelta.save(model, folder)
    monkeypatch.setattr(atomic.os, "rename", real_rename)
    # the rollback put the old folder back: it still loads
    assert torch.equal(_outputs_of(folder, zm), _outputs_of(folder, zm))
    # a real kill skips the rollback: loading then says where the previous checkpoint went
    aside = tmp_path / ".ckpt.old-x"
    real_rename(folder, aside)
    with pytest.raises(CheckpointError, match=r"interrupted.*\.ckpt\.old-x"):
        fxdelta.load(zm.build(), folder)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_and_folder_follow_the_umask(tmp_path, umask):
    _, model = _trained(seed=1)
    old = os.umask(umask)
    try:
        fxdelta.save(model, tmp_path / "ckpt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o777 & ~umask
    for name in (checkpoint.TENSORS_FILE, checkpoint.CONFIG_FILE):
        assert stat.S_IMODE((tmp_path / "ckpt" / name).stat().st_mode) == 0o666 & ~umask


def test_write_errors_are_checkpoint_errors_naming_the_path(tmp_path):
    _, model = _trained(seed=1)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        fxdelta.save(model, a_file)
    with pytest.raises(CheckpointError, match=str(a_file)):
        fxdelta.save(model, a_file / "under")  # a folder cannot be made under a file
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    (crowded / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="holds other files"):
        fxdelta.save(model, crowded)
    assert (crowded / "notes.txt").read_text() == "mine"
    with pytest.raises(CheckpointError, match="folder path"):
        fxdelta.save(model, None)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        with pytest.raises(CheckpointError, match=str(locked)):
            fxdelta.save(model, locked / "ckpt")
        locked.chmod(0o700)


def test_saving_over_a_checkpoint_replaces_it_whole(tmp_path):
    zm, first = _trained(seed=1)
    folder = tmp_path / "ckpt"
    fxdelta.save(first, folder)
    _, second = _trained(seed=2)
    fxdelta.save(second, folder)
    with torch.no_grad():
        assert torch.equal(_outputs_of(folder, zm), zm.run(second, zm.inputs()))
    assert sorted(p.name for p in folder.iterdir()) == sorted([checkpoint.TENSORS_FILE, checkpoint.CONFIG_FILE])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    shutil.rmtree(folder)
