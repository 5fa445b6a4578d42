"""Training-free fusions: text-only (ChatIR), DAR score fusion, and plain addition.

All return one query vector per dialog. DAR's score fusion w_t*cos(t,x) + w_g*cos(g,x) is
linear in x, so it equals one inner-product search with w_t*t + w_g*g: one FAISS call.
"""

from __future__ import annotations

import numpy as np


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def text_only(t: np.ndarray, g: np.ndarray | None, round_: int) -> np.ndarray:
    return t


def dar_weights(round_: int) -> tuple[float, float]:
    """(w_t, w_g): lean on the text early, when the pseudo-image is drawn from little."""
    return (0.8, 0.2) if round_ <= 1 else (0.5, 0.5)


def dar(t: np.ndarray, g: np.ndarray | None, round_: int) -> np.ndarray:
    if g is None:
        return t
    w_t, w_g = dar_weights(round_)
    return w_t * t + w_g * g


def add(t: np.ndarray, g: np.ndarray | None, round_: int) -> np.ndarray:
    return t if g is None else _normalize(t + g)


FUSIONS = {"text": text_only, "dar": dar, "add": add}


def get_fusion(name: str):
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; expected one of {sorted(FUSIONS)}")
    return FUSIONS[name]
