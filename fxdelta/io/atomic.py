"""Replace a folder as one step: its old contents or its new ones are there, never neither, never a mix.

The new contents are written into a temporary folder beside the target, then swapped in. On Linux
the swap is one ``renameat2(RENAME_EXCHANGE)``; elsewhere (or where the file system refuses it) the
old folder is renamed aside, the new one renamed in, and the old one removed, so a crash in that
short window leaves the old contents in ``.<name>.old-*`` beside the target (loading names it).
Files and folders get the modes the umask gives; every failure is a ``CheckpointError`` naming the path.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

from fxdelta.core.errors import CheckpointError

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@functools.cache
def _renameat2() -> Any:
    name = ctypes.util.find_library("c")  # runs ldconfig: once per process
    return getattr(ctypes.CDLL(name, use_errno=True), "renameat2", None) if name else None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where that is not available."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _settle(folder: Path) -> None:
    """Give the new files the umask's modes and flush them to disk."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for file in folder.iterdir():
        os.chmod(file, 0o666 & ~mask)
        _fsync(file)
    _fsync(folder)


def check_target(target: Path, allowed: Collection[str], what: str) -> None:
    """Refuse a target that is a file, or a folder holding anything but ``allowed`` names."""
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{str(target)!r} is a file; save the {what} into a folder (a new path, or one it owns)")
    if target.is_dir():
        foreign = sorted(p.name for p in target.iterdir() if p.name not in allowed)
        if foreign:
            raise CheckpointError(
                f"{str(target)!r} holds other files ({foreign[:3]}); the {what} replaces its folder as a whole, "
                f"so save it into a folder of its own"
            )


@contextlib.contextmanager
def _named_failures(what: str, where: str) -> Iterator[None]:
    """Any failure of a write, as a CheckpointError naming what was written and where."""
    try:
        yield
    except CheckpointError:
        raise
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"could not write the {what} {where}: {e}") from e


def replace_folder(target: Path, fill: Callable[[Path], None], *, allowed: Collection[str], what: str) -> None:
    """Make ``target`` a folder holding what ``fill(folder)`` writes, replacing it (if any) in one step."""
    check_target(target, allowed, what)
    staging: Path | None = None
    try:
        with _named_failures(what, f"at {str(target)!r}"):
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
            fill(staging)
            _settle(staging)
            if not target.exists():
                os.rename(staging, target)
                staging = None
            elif _exchange(staging, target):  # staging now holds the old contents
                shutil.rmtree(staging, ignore_errors=True)
                staging = None
            else:
                _swap_aside(staging, target)
                staging = None
            with contextlib.suppress(OSError):
                _fsync(target.parent)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _swap_aside(staging: Path, target: Path) -> None:
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rmdir(aside)  # a fresh unused name for the old folder
    os.rename(target, aside)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def interrupted_saves(target: Path) -> list[Path]:
    """Old contents a save moved aside and did not get to remove (a crash in the fallback swap)."""
    return sorted(target.parent.glob(f".{target.name}.old-*")) if target.parent.is_dir() else []


def write_into_folder(
    target: Path, fill: Callable[[Path], None], *, names: Sequence[str], stale: Sequence[str] = (), what: str
) -> None:
    """Write the files ``names`` (as ``fill(folder)`` makes them) into the folder ``target``, beside what else
    it holds (a Trainer's output folder), each replaced in one step, in the order given (the file that says
    what the others are goes last); then remove the files matching the glob patterns ``stale``."""
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{str(target)!r} is a file; save the {what} into a folder")
    staging: Path | None = None
    try:
        with _named_failures(what, f"into {str(target)!r}"):
            target.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".fxdelta-tmp-", dir=target))
            fill(staging)
            _settle(staging)
            for name in names:
                os.replace(staging / name, target / name)
            for pattern in stale:
                for old in target.glob(pattern):
                    old.unlink()
            with contextlib.suppress(OSError):
                _fsync(target)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
