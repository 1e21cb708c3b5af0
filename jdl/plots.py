"""PNG figures of a run: loss and accuracy curves from metrics.jsonl."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_curves(records: list[dict], path: str | Path, title: str = "") -> Path:
    """Two panels (loss, accuracy) with one line per `<split>/<name>` series, against step."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name in zip(axes, ("loss", "accuracy"), strict=True):
        for split in ("train", "eval"):
            key = f"{split}/{name}"
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="o" if split == "eval" else None, label=split)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
