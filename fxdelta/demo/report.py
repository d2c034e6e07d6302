"""What the real demo shows: the results table (rich) and the accuracy-vs-trainable-parameters plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fxdelta.demo.runs import RUNS, Result


def human_bytes(n: int) -> str:
    units, value, i = ("B", "KB", "MB", "GB"), float(n), 0
    while value >= 1000 and i < len(units) - 1:
        value, i = value / 1000, i + 1
    return f"{n} B" if i == 0 else f"{value:.1f} {units[i]}"


def share(part: int, whole: int) -> str:
    """``part`` with its percentage of ``whole``: two significant digits below 1%, whole percents above."""
    pct = 100 * part / whole
    return f"{part:,} ({pct:.0f}%)" if pct >= 1 else f"{part:,} ({pct:.2g}%)"


def table(results: Sequence[Result], total_params: int, n_test: int):
    """The results as a ``rich`` table."""
    from rich.table import Table

    t = Table(title=f"held-out accuracy on {n_test} BBC News articles (5 topics)")
    for column in ("method", "accuracy", "trainable params", "checkpoint", "train time"):
        t.add_column(column, justify="left" if column == "method" else "right")
    for r in results:
        size, seconds = human_bytes(r.checkpoint_bytes), f"{r.train_seconds:.0f} s"
        t.add_row(r.name, f"{r.accuracy:.1%}", share(r.trainable, total_params), size, seconds)
    return t


def markdown(results: Sequence[Result], total_params: int) -> str:
    """The same rows as Markdown (written to ``results.md`` beside the plot)."""
    rows = ["| method | accuracy | trainable params | checkpoint | train time |", "|---|---|---|---|---|"]
    for r in results:
        rows.append(
            f"| {r.name} | {r.accuracy:.1%} | {share(r.trainable, total_params)} "
            f"| {human_bytes(r.checkpoint_bytes)} | {r.train_seconds:.0f} s |"
        )
    return "\n".join(rows) + "\n"


def plot(results: Sequence[Result], file: Path, title: str) -> Path:
    """Accuracy against trainable parameters (log x), one labelled point per method, saved to ``file``."""
    import matplotlib

    matplotlib.use("Agg")  # a file, never a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labelled = set()
    for r in results:
        delta = RUNS[r.name].spec is not None
        kind = "delta (fxdelta)" if delta else "baseline"
        label = None if kind in labelled else kind
        labelled.add(kind)
        marker, color = ("o", "C0") if delta else ("s", "C1")
        ax.scatter(r.trainable, 100 * r.accuracy, s=70, label=label, marker=marker, color=color)
        ax.annotate(r.name, (r.trainable, 100 * r.accuracy), textcoords="offset points", xytext=(6, 6))
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(x=0.25, y=0.15)
    ax.legend(loc="lower right")
    fig.tight_layout()
    file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(file, dpi=120)
    plt.close(fig)
    return file
