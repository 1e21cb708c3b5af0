"""PNG figures of a run: one panel per metric of metrics.jsonl, train and eval together."""

import math
from pathlib import Path

from matplotlib.figure import Figure

NOT_PLOTTED = ("examples_per_sec",)  # speed is a property of the machine, not of the model
SPLITS = ("train", "eval")
MAX_COLUMNS = 3


def metric_names(records: list[dict]) -> list[str]:
    """Names of the `<split>/<name>` series in `records`, in order of first appearance."""
    names: dict[str, None] = {}
    for record in records:
        for key in record:
            split, _, name = key.partition("/")
            if split in SPLITS and name and name not in NOT_PLOTTED:
                names[name] = None
    return list(names)


def plot_curves(records: list[dict], path: str | Path, title: str = "") -> Path:
    """One panel per metric (loss, accuracy, ...) with a line per split, against step."""
    names = metric_names(records) or ["loss"]
    columns = min(len(names), MAX_COLUMNS)
    rows = math.ceil(len(names) / columns)
    # A Figure of its own, not pyplot's: no backend switch and no global figure state.
    fig = Figure(figsize=(5 * columns, 4 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for split in SPLITS:
            key = f"{split}/{name}"
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="o" if split == "eval" else None, label=split)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)
