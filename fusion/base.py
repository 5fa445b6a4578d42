"""The fusion interface: (t, g, round) -> one query vector per dialog, plus the decision.

`t` and `g` are L2-normalised text and pseudo-image embeddings [N, D]; `rounds` [N] are the
dialog rounds (0 = first message). What a fusion decided (fixed weights, a learned gate,
expert weights) comes back as named columns, so the UI can show it for one turn and an
evaluation can study it over thousands.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CONFIG_NAME = "fusion_config.json"


@dataclass
class Fused:
    query: np.ndarray  # [N, D] float32: what the index is searched with
    decision: dict[str, np.ndarray] = field(default_factory=dict)  # column -> [N] or [N, E]

    def row(self, i: int = 0) -> dict[str, float | list[float]]:
        """The decision for one dialog, as plain JSON-able numbers."""
        return {k: (v[i].round(4).tolist() if np.ndim(v[i]) else round(float(v[i]), 4))
                for k, v in self.decision.items()}


class Fusion(ABC):
    kind: str  # registry name, written into the checkpoint's config
    uses_image: bool  # False: the engine need not generate or embed a pseudo-image

    @property
    def name(self) -> str:
        return self.kind

    @abstractmethod
    def __call__(self, t: np.ndarray, g: np.ndarray | None, rounds: np.ndarray) -> Fused:
        """t [N, D], g [N, D] (None only when `uses_image` is False), rounds [N]."""

    def check_encoder(self, identity: str, dim: int) -> None:  # noqa: B027 (optional hook)
        """Refuse an encoder whose embeddings this fusion cannot fuse (learned ones only)."""

    def config(self) -> dict:
        return {}

    def save_pretrained(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps({"kind": self.kind, **self.config()},
                                                     indent=2) + "\n")
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Fusion:
        config = read_config(folder)
        config.pop("kind", None)
        return cls(**config)


def read_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no fusion checkpoint at {folder} (expected {CONFIG_NAME})")
    return json.loads(path.read_text())


def check_inputs(t: np.ndarray, g: np.ndarray | None, rounds) -> tuple[np.ndarray, np.ndarray]:
    t = np.atleast_2d(np.asarray(t, dtype=np.float32))
    rounds = np.broadcast_to(np.asarray(rounds, dtype=np.int64), (len(t),))
    if g is not None and np.shape(g) != t.shape:
        raise ValueError(f"text {t.shape} and image {np.shape(g)} embeddings differ in shape")
    return t, rounds
