"""Training-free fusions: text-only (ChatIR), DAR score fusion, and plain addition.

DAR's score fusion w_t*cos(t,x) + w_g*cos(g,x) is linear in x, so it equals one
inner-product search with the vector w_t*t + w_g*g: one FAISS call, no second search.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from fusion.base import Fused, Fusion, check_inputs


def normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class TextOnly(Fusion):
    """ChatIR's baseline: the text embedding alone."""

    kind, uses_image = "text", False

    def __call__(self, t, g, rounds) -> Fused:
        t, rounds = check_inputs(t, None, rounds)
        return Fused(t, {"w_text": np.ones(len(t), np.float32)})


@dataclass
class DAR(Fusion):
    """Diffusion Augmented Retrieval: fixed weights, leaning on the text while the dialog (and
    so the pseudo-image drawn from it) is short."""

    early: tuple[float, float] = (0.8, 0.2)  # (w_text, w_image) before `switch_round`
    late: tuple[float, float] = (0.5, 0.5)
    switch_round: int = 2

    kind, uses_image = "dar", True

    def weights(self, rounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        late = np.asarray(rounds) >= self.switch_round
        w_t = np.where(late, self.late[0], self.early[0]).astype(np.float32)
        w_g = np.where(late, self.late[1], self.early[1]).astype(np.float32)
        return w_t, w_g

    def __call__(self, t, g, rounds) -> Fused:
        t, rounds = check_inputs(t, g, rounds)
        w_t, w_g = self.weights(rounds)
        query = w_t[:, None] * t + w_g[:, None] * np.asarray(g, np.float32)
        return Fused(query.astype(np.float32), {"w_text": w_t, "w_image": w_g})

    def config(self) -> dict:
        return asdict(self)

    @classmethod
    def from_pretrained(cls, folder) -> DAR:
        fusion = super().from_pretrained(folder)
        return cls(tuple(fusion.early), tuple(fusion.late), fusion.switch_round)


class Add(Fusion):
    """normalize(t + g): the static fusion ADaFuSE argues against."""

    kind, uses_image = "add", True

    def __call__(self, t, g, rounds) -> Fused:
        t, rounds = check_inputs(t, g, rounds)
        half = np.full(len(t), 0.5, np.float32)
        return Fused(normalize(t + np.asarray(g, np.float32)).astype(np.float32),
                     {"w_text": half, "w_image": half})
