"""The turn pipeline: the one loop the UI, the CLI and evaluation drive.

`Engine` holds what is loaded once per process (encoder, generator, fusion, index) and is
shared by every session. One turn: dialog state -> query text -> text embedding t
(+ pseudo-image and its embedding g, when the fusion uses it or the person wants to see it)
-> fusion -> one FAISS search.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from dialog import DialogState, get_reformulation
from engine.profile import Profile
from engine.session import SearchSession
from fusion import Fusion, TextOnly
from generation.base import GenerationError, Generator
from retrieval.encoders import Encoder
from retrieval.index import IndexMismatchError, VectorIndex


@dataclass
class Hit:
    rank: int
    path: str
    score: float


@dataclass
class TurnResult:
    round: int
    query: str
    hits: list[Hit]
    pseudo_image: Image.Image | None = None
    fusion: str = "text"
    decision: dict = field(default_factory=dict)  # what the fusion decided (weights, gate)
    notice: str | None = None  # something the person should know (e.g. generation failed)
    timings_ms: dict[str, float] = field(default_factory=dict)


class Engine:
    def __init__(self, profile: Profile, encoder: Encoder, index: VectorIndex, fusion: Fusion,
                 generator: Generator | None = None):
        if index.meta.encoder != encoder.identity:
            raise IndexMismatchError(f"index built with {index.meta.encoder!r}, encoder is "
                                     f"{encoder.identity!r}")
        fusion.check_encoder(encoder.identity, encoder.dim)
        if fusion.uses_image and generator is None:
            raise ValueError(f"fusion {fusion.name!r} fuses a pseudo-image, but profile "
                             f"{profile.name!r} has no generator; use fusion 'text' or set one")
        self.profile, self.encoder, self.index = profile, encoder, index
        self.fusion, self.generator = fusion, generator
        self.reformulate = get_reformulation(profile.reformulation)

    def search(self, query: str, round_: int = 0, k: int | None = None) -> TurnResult:
        """Search for one query text at dialog round `round_` (the fusion may depend on it)."""
        k = self._check_k(k)
        if round_ < 0:
            raise ValueError(f"the dialog round starts at 0, got {round_}")
        timings: dict[str, float] = {}
        start = tick = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal tick
            now = time.perf_counter()
            timings[stage] = (now - tick) * 1e3
            tick = now

        t = self.encoder.encode_texts([query])
        lap("encode_text")
        image, g, notice = None, None, None
        draw = self.fusion.uses_image or self.profile.show_pseudo_image
        if self.generator is not None and draw:
            spec = self.profile.generator
            # Only a fusion that embeds the image profits from more than one sample.
            n = spec.samples if self.fusion.uses_image else 1
            images = []
            try:
                images = self.generator.generate([query], seed=spec.seed, n=n)
            except GenerationError as e:  # expected failures only; a bug should surface
                notice = f"No pseudo-image this turn ({e}); searching with the text alone."
            lap("generate")
            image = images[0] if images else None
            if images and self.fusion.uses_image:
                # The mean of K samples' embeddings: what the K drawings agree on.
                g = self.encoder.encode_images(images).mean(0, keepdims=True)
                g /= np.linalg.norm(g, axis=1, keepdims=True)
                lap("embed_image")
        # A fusion that needs the image falls back to the text when there is none.
        fusion = self.fusion if g is not None or not self.fusion.uses_image else TextOnly()
        fused = fusion(t, g, np.array([round_]))
        lap("fuse")
        hits = self._hits(fused.query, k)
        lap("search")
        timings["total"] = (time.perf_counter() - start) * 1e3
        return TurnResult(round_, query, hits, image, fusion.name, fused.row(0), notice,
                          timings)

    def search_image(self, image: Image.Image, k: int | None = None) -> list[Hit]:
        """Query by example: the gallery images nearest to `image` (the encoder's space)."""
        return self._hits(self.encoder.encode_images([image]), self._check_k(k))

    def _check_k(self, k: int | None) -> int:
        k = self.profile.top_k if k is None else k
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        return k

    def _hits(self, query: np.ndarray, k: int) -> list[Hit]:
        scores, ids = self.index.search(query, k)
        return [Hit(r, self.index.paths[i], float(s))
                for r, (s, i) in enumerate(zip(scores[0], ids[0])) if i >= 0]

    def turn(self, state: DialogState, k: int | None = None) -> TurnResult:
        """The search for a dialog's latest round."""
        if not state.turns:
            raise ValueError("the dialog has no turn yet: say what you are looking for")
        return self.search(state.query(self.reformulate), state.round, k)

    def session(self, state: DialogState | dict | None = None) -> SearchSession:
        if not isinstance(state, DialogState):
            state = DialogState.from_dict(state)
        return SearchSession(self, state)
