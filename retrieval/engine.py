"""The search engine and its sessions: the one loop the UI, the CLI and evaluation drive.

`Engine` holds what is loaded once (encoder, generator, index); `SearchSession` holds one
person's dialog. A turn: dialog -> ChatIR query -> text embedding t (+ pseudo-image and its
embedding g) -> fusion -> one FAISS search.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from PIL import Image

from fusion.static import get_fusion
from generation.base import GenerationError, Generator
from itir.profile import Profile
from retrieval.encoders import Encoder
from retrieval.index import VectorIndex
from retrieval.ingest import Progress

MAX_MESSAGE_CHARS = 1000  # the text tower reads ~128 tokens; longer text is silently cut


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
    notice: str | None = None  # something the person should know (e.g. generation failed)
    timings_ms: dict[str, float] = field(default_factory=dict)


def check_message(text: str) -> str:
    text = (text or "").strip()
    if not text:
        raise ValueError("Empty message: describe the picture you are looking for, "
                         "e.g. 'two red circles on a blue background'.")
    if len(text) > MAX_MESSAGE_CHARS:
        raise ValueError(f"Message too long ({len(text)} characters; the limit is "
                         f"{MAX_MESSAGE_CHARS}). The search reads about 100 words per dialog, "
                         "so say the most distinctive things first and keep it short.")
    return text


class Engine:
    def __init__(self, profile: Profile, encoder: Encoder, index: VectorIndex,
                 generator: Generator | None = None):
        if index.meta.encoder != encoder.identity:
            raise ValueError(f"index built with {index.meta.encoder!r}, encoder is "
                             f"{encoder.identity!r}")
        self.profile, self.encoder, self.index, self.generator = profile, encoder, index, generator
        self.fuse = get_fusion(profile.fusion)

    @classmethod
    def from_profile(cls, profile: Profile, progress: Progress | None = None,
                     with_generator: bool = True) -> Engine:
        """Load models once; build the world gallery and the index if they are missing."""
        from generation.factory import load_generator
        from retrieval.factory import ensure_index, load_encoder

        encoder = load_encoder(profile)
        tower = getattr(encoder, "text_tower", None)
        generator = load_generator(profile, tower) if with_generator else None
        index = ensure_index(profile, encoder, progress)
        return cls(profile, encoder, index, generator)

    def search(self, query: str, round_: int = 0, k: int | None = None) -> TurnResult:
        timings: dict[str, float] = {}
        start = time.perf_counter()
        t = self.encoder.encode_texts([query])[0]
        timings["encode_text"] = (time.perf_counter() - start) * 1e3
        g, image, notice = None, None, None
        if self.generator is not None:
            tick = time.perf_counter()
            try:
                image = self.generator.generate([query], seed=self.profile.generator.seed)[0]
                g = self.encoder.encode_images([image])[0]
            except (GenerationError, RuntimeError) as e:
                notice = f"No pseudo-image this turn ({e}); searching with the text alone."
            timings["generate"] = (time.perf_counter() - tick) * 1e3
        q = self.fuse(t, g, round_)
        tick = time.perf_counter()
        scores, ids = self.index.search(q[None, :], k or self.profile.top_k)
        timings["search"] = (time.perf_counter() - tick) * 1e3
        hits = [Hit(r, self.index.paths[i], float(s))
                for r, (s, i) in enumerate(zip(scores[0], ids[0])) if i >= 0]
        timings["total"] = (time.perf_counter() - start) * 1e3
        return TurnResult(round_, query, hits, image, self.profile.fusion, notice, timings)

    def session(self) -> SearchSession:
        return SearchSession(self)


class SearchSession:
    """One person's dialog. Each message is a turn; the query is ChatIR's ', '.join."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.turns: list[str] = []

    @property
    def query(self) -> str:
        return ", ".join(self.turns)

    def send(self, message: str) -> TurnResult:
        message = check_message(message)
        turns = [*self.turns, message]
        result = self.engine.search(", ".join(turns), round_=len(turns) - 1)
        self.turns = turns  # only a turn that answered becomes part of the dialog
        return result

    def reset(self) -> None:
        self.turns = []


