"""The loss curve of a run, as a PNG next to the model it trained (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path


def training_curve(log_jsonl: str | Path, out: str | Path, title: str) -> Path:
    """Plot `loss` against `step` from a run's JSONL log."""
    import matplotlib  # here, not at the top: only a finished run draws, and it is slow to load

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(log_jsonl).read_text().splitlines() if line]
    rows = [r for r in rows if "loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return save_figure(fig, out)


def save_figure(fig, out: str | Path) -> Path:
    """Write `fig` as a PNG at `out` (folders made as needed) and free it."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
