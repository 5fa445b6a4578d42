"""PNG plots of benchmark results (matplotlib, headless). Loss curves: training.plots."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from training.plots import save_figure  # noqa: E402


def encoder_recall(result: dict, out: str | Path) -> Path:
    """Grouped bars: R@1/5/10 per rendering style, for each kind of query text."""
    kinds = [k for k in ("full caption", "round-0 caption", "free description",
                         "held-out phrasing") if k in result]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.0 * len(kinds), 3.6), sharey=True)
    for ax, kind in zip(list(axes) if len(kinds) > 1 else [axes], kinds):
        groups = list(result[kind])
        for j, metric in enumerate(("R@1", "R@5", "R@10")):
            xs = [i + (j - 1) * 0.27 for i in range(len(groups))]
            ax.bar(xs, [result[kind][g][metric] for g in groups], width=0.27, label=metric)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(f"text->image, {kind} ({result['scenes']} test scenes)")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes_list = list(axes) if len(kinds) > 1 else [axes]
    axes_list[0].set_ylabel("recall")
    axes_list[-1].legend(loc="upper right")
    return save_figure(fig, out)


def generator_fidelity(result: dict, out: str | Path) -> Path:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = ["chance", "generated image", "text", "DAR 0.5/0.5"]
    values = [result["chance_R@10"], result["generated_image_to_image"]["R@10"],
              result["text_to_image"]["R@10"], result["dar_0.5_0.5"]["R@10"]]
    a.bar(names, values, color=["#999", "#d62", "#26a", "#6a4"])
    a.set_title(f"R@10 among {result['gallery']} test scenes ({result['captions']} captions)")
    a.set_ylim(0, 1)
    agree = result["top10_agreement"]
    b.bar(list(agree), list(agree.values()), color=["#6a4", "#26a", "#d62", "#999"])
    b.set_title("who finds the target in the top 10")
    b.set_ylim(0, 1)
    for ax in (a, b):
        ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out)


def generator_rounds(result: dict, out: str | Path) -> Path:
    """Per dialog round: image-only Hits@10 (text-only beside it) and what the judge sees."""
    rounds = list(result["rounds"])
    rows = [result["rounds"][r] for r in rounds]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    xs = range(len(rounds))
    a.bar([x - 0.2 for x in xs], [r["image_hits@10"] for r in rows], width=0.4,
          label="pseudo-image alone", color="#d62")
    a.bar([x + 0.2 for x in xs], [r["text_hits@10"] for r in rows], width=0.4,
          label="text alone", color="#26a")
    a.set_xticks(list(xs), [f"round {r}" for r in rounds])
    a.set_ylim(0, 100)
    a.set_ylabel("% of dialogs, target in top 10")
    a.set_title(f"{result['dialogs']} test dialogs, {result['gallery']}-scene gallery")
    a.legend(loc="upper left")
    for key, label, colour in (("background_right", "background right (when named)", "#6a4"),
                               ("object_colour_right", "named object's colour in its cell",
                                "#d62"),
                               ("ceiling_object_colour_right", "same judge on real renders",
                                "#999"),
                               ("empty_cells_clean", "empty cells left empty", "#26a")):
        b.plot(list(xs), [r[key] if r[key] is not None else float("nan") for r in rows],
               marker="o", label=label, color=colour)
    b.set_xticks(list(xs), [f"round {r}" for r in rounds])
    b.set_ylim(0, 1.05)
    b.set_title("what the pseudo-image shows (ground-truth judge)")
    b.legend(loc="lower left", fontsize=8)
    for ax in (a, b):
        ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out)


def continual(result: dict, out: str | Path) -> Path:
    """Left: DAR's accuracy matrix (R@10 on each domain after each arrival). Right: average
    R@10 over the domains seen so far, per method, against the number of domains."""
    doms = result["domains"]
    order = [doms["base"], *doms["arrivals"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.4))
    rows = result["matrix"]["dar"]
    grid = [[row[d]["R@10"] if d in row else float("nan") for d in [*order, doms["held_out"]]]
            for row in rows]
    im = a.imshow(grid, vmin=0, vmax=100, cmap="viridis")
    for i, line in enumerate(grid):
        for j, v in enumerate(line):
            if v == v:  # not NaN
                a.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8,
                       color="white" if v < 60 else "black")
    a.set_xticks(range(len(order) + 1), [*order, doms["held_out"] + "\n(held out)"],
                 rotation=45, ha="right")
    a.set_yticks(range(len(rows)), ["base"] + [f"+{d}" for d in doms["arrivals"]])
    a.set_title("DAR: text->image R@10 per test domain (rows: after each arrival)")
    fig.colorbar(im, ax=a, fraction=0.04)
    for method, rows in result["matrix"].items():
        avg = [sum(row[d]["R@10"] for d in order[:k + 1]) / (k + 1) for k, row in enumerate(rows)]
        b.plot(range(1, len(avg) + 1), avg, marker="o", label=method)
    b.set_xlabel("domains learnt (base + arrivals)")
    b.set_ylabel("average R@10 over domains seen (%)")
    b.set_title("average R@10 as domains arrive")
    b.grid(alpha=0.3)
    b.legend()
    return save_figure(fig, out)
