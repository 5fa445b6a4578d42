"""Retrieval metrics over score matrices, dialog rank curves (ChatIR), and latency summaries."""

from __future__ import annotations

import numpy as np


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target among all columns (ties count in its favour)."""
    own = scores[np.arange(len(scores)), targets]
    return (scores > own[:, None]).sum(1)


def recall_at(ranks: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    return {f"R@{k}": float((ranks < k).mean()) for k in ks}


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean()), "n": len(ms)}


# The ChatIR protocol (DESIGN.md "Evaluation"). `ranks` [N, R]: the target's 0-based rank in
# the whole corpus for dialog i at round r.

def found_by_round(ranks: np.ndarray, k: int) -> np.ndarray:
    """[N, R] whether dialog i's target was in the top k at any round <= r."""
    return np.minimum.accumulate(ranks, axis=1) < k


def cumulative_hits(ranks: np.ndarray, k: int) -> np.ndarray:
    """[R] percent of dialogs whose target was in the top k at any round <= r."""
    return found_by_round(ranks, k).mean(0) * 100


def bri(ranks: np.ndarray) -> float:
    """PlugIR's Best log Rank Integral: the area under log(1 + best 1-based rank so far),
    by the trapezoid rule over rounds; lower is better."""
    best = np.log1p(np.minimum.accumulate(ranks, axis=1) + 1)
    return float(((best[:, :-1] + best[:, 1:]) / 2).mean())


def degradation(ranks: np.ndarray, text_ranks: np.ndarray) -> np.ndarray:
    """[R] percent of dialogs whose target this method ranks worse than text-only does."""
    return (ranks > text_ranks).mean(0) * 100


def hits_difference_ci(ranks: np.ndarray, reference: np.ndarray, k: int,
                       samples: int = 2000, seed: int = 0) -> np.ndarray:
    """[R, 2] 95% interval of cumulative Hits@k(ranks) - Hits@k(reference), in points, by a
    paired bootstrap: dialogs drawn with replacement, the same draws for both methods (their
    results on one dialog are correlated, so intervals of each alone would be too wide)."""
    diff = (found_by_round(ranks, k).astype(np.float64) - found_by_round(reference, k)) * 100
    n = len(diff)
    # Each resample as counts per dialog: [samples, N] @ [N, R], no [samples, N, R] array.
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=samples)
    return np.percentile(counts @ diff / n, [2.5, 97.5], axis=0).T
