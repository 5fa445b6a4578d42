"""The turn pipeline: the one loop the UI, the CLI and evaluation drive.

`Engine` holds what is loaded once per process (encoder, generator, fusion, index) and is
shared by every session. One turn: dialog state -> query text -> text embedding t
(+ pseudo-image and its embedding g, when the fusion uses it or the person wants to see it)
-> fusion -> one FAISS search.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from dialog import DialogState, get_reformulation
from dialog.query import fit_turns
from engine.load import TurnLoad
from engine.model_thread import BACKGROUND, HEAVY, model_thread
from engine.profile import Profile
from engine.questioner import Asked, Questioner
from engine.recorder import Recorder
from engine.session import SearchSession
from fusion import BUILT_IN, Fused, Fusion, TextOnly
from generation.base import Generator
from generation.spec import GenerationError
from retrieval.encoders import Encoder
from retrieval.index import IndexMismatchError, VectorIndex

# Gallery paths marked by a click, alike or each with its weight (Rocchio's mean).
Marks = Sequence[str] | Mapping[str, float]


def _weighed(marks: Marks) -> dict[str, float]:
    """Marks as path -> weight (plain paths weigh 1); a weight must be finite, 0 or more."""
    weights = dict(marks) if isinstance(marks, Mapping) else dict.fromkeys(marks, 1.0)
    if not all(0 <= w < math.inf for w in weights.values()):
        raise ValueError("a mark's weight must be a finite number, 0 or more")
    return weights

# What `Engine.warm_up` searches: eight different made-up turns (a batch of distinct texts).
WARM_UP_QUERIES = (
    "a red circle over blue, how many objects are there? one",
    "two small green squares on a white background",
    "a large striped yellow triangle at the top left",
    "three purple stars over black, what size are they? small",
    "an orange hexagon in the middle, is it dotted? yes",
    "a gray cross on a pink background",
    "two brown diamonds, where are they? on the right",
    "a big cyan heart over olive, is there anything else? no",
)


@dataclass
class Hit:
    rank: int
    path: str
    score: float
    id: int = -1  # the index's id of the image


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
    question: str | None = None  # the clarifying question the system asks next
    question_id: str | None = None
    options: list[str] = field(default_factory=list)  # its likeliest answers
    query_vector: np.ndarray | None = None  # [1, D]: what the index was searched with
    domains: dict[str, float] = field(default_factory=dict)  # the pseudo-image's routing
    steps: int | None = None  # the pseudo-image's denoising steps (fewer on a busy CPU)


def embedding_space(encoder: Encoder) -> str:
    """What a fusion checkpoint depends on: the encoder's embedding space. Image-domain
    adapters (`itir domain`) change how some images are embedded but are trained into the
    base encoder's space against its frozen text side, so a fusion trained on the base still
    fits; `image_identity` (what an index depends on) does change with them."""
    return getattr(encoder, "base_identity", encoder.identity)


@dataclass
class _Finished:
    """A turn's fusion and search."""
    fusion: Fusion  # the one used (text alone when a fusion had no pseudo-image)
    fused: Fused
    query_vector: np.ndarray
    hits: list[Hit]
    fuse_ms: float
    search_ms: float


@dataclass
class _Drawn:
    """One turn's share of a batch of pseudo-images."""
    images: list[Image.Image]
    steps: int  # denoising steps they took; 0: none drawn, the turns searched with their text
    weights: np.ndarray | None = None  # [n, domains] how the encoder routed them, if it does
    embed_ms: float = 0.0  # the batch's embedding time
    text_ms: float = 0.0  # the batch's text queries' time, when the drawing's call read them
    finished: _Finished | None = None  # the turn's search, when the drawing's call ran it
    error: Exception | None = None  # ... or why that search failed


class Engine:
    def __init__(self, profile: Profile, encoder: Encoder, index: VectorIndex, fusion: Fusion,
                 generator: Generator | None = None, questioner: Questioner | None = None,
                 recorder: Recorder | None = None):
        if index.meta.encoder != encoder.image_identity:  # what the vectors depend on
            raise IndexMismatchError(f"index built with {index.meta.encoder!r}, encoder's "
                                     f"image side is {encoder.image_identity!r}")
        fusion.check_encoder(embedding_space(encoder), encoder.dim)
        if fusion.uses_image and generator is None:
            raise ValueError(f"fusion {fusion.name!r} fuses a pseudo-image, but profile "
                             f"{profile.name!r} has no generator; use fusion 'text' or set one")
        self.profile, self.encoder, self.index = profile, encoder, index
        self.fusion, self.generator = fusion, generator
        self.questioner, self.recorder = questioner, recorder
        self.notice: str | None = None  # about the setup, for every session (e.g. a fallback)
        self.reformulate = get_reformulation(profile.reformulation)
        # Every model call (and FAISS's, also OpenMP) runs on the process's model thread,
        # where concurrent turns' text queries and pseudo-images are batched (model_thread.py).
        self.model_thread = model_thread()
        self.load = TurnLoad()  # how many turns at once lately: sizes a CPU's drawing steps
        self._ids: dict[str, int] | None = None  # path -> index id, built on first feedback
        # What a person may switch between: the profile's fusion and, with a generator,
        # the built-in static ones.
        self.fusions: dict[str, Fusion] = {fusion.name: fusion}
        for name, cls in BUILT_IN.items():
            if name not in self.fusions and (generator is not None or not cls.uses_image):
                self.fusions[name] = cls()

    def describe(self) -> str:
        """What runs, as loaded: the profile's `auto` choices resolved."""
        drawn = ("no pseudo-images" if self.generator is None else
                 f"pseudo-images in {self.generator.steps} steps on {self.generator.runtime}")
        # The world encoder's text side may run on ONNX Runtime; a hub encoder's on torch.
        text = f"text on {getattr(self.encoder, 'runtime', 'torch')}"
        return f"fusion {self.fusion.name} · {text} · {drawn} · {len(self.index)} images"

    def warm_up(self, turns: int) -> float:
        """Search a made-up query alone, then `turns` at once, as that many sessions would,
        and return the seconds it took. A process's first batches through ONNX Runtime and
        the memory allocator cost far more than later ones: on a freshly started app the
        first burst of 8 sessions' turns took ~575 ms p50 against ~350 ms for the next ones
        (docs/BENCHMARKS.md, "Concurrent sessions"), so the app pays that before anyone
        waits on it. Nothing is recorded; a failure is raised, as the first person's turn
        would have met it."""
        began = time.perf_counter()
        queries = [WARM_UP_QUERIES[i % len(WARM_UP_QUERIES)] for i in range(turns)]
        # One alone first: on a CPU a burst may be too busy to draw at all (`[generator]
        # cpu_step_budget`), and a person alone would then pay the drawing's first use.
        self.search(queries[0], round_=1, display=False)
        with ThreadPoolExecutor(max(turns, 1)) as pool:  # map re-raises the first failure
            list(pool.map(lambda q: self.search(q, round_=1, display=False), queries))
        return time.perf_counter() - began

    def search(self, query: str, round_: int = 0, k: int | None = None,
               liked: Marks = (), rejected: Marks = (),
               fusion: Fusion | None = None, display: bool = True) -> TurnResult:
        """Search for one query text at dialog round `round_` (the fusion may depend on it).

        `liked` / `rejected`: gallery paths marked "more like this" / "not this" (or path ->
        weight); the query moves towards the first and away from the second (Rocchio), and
        rejected images are never returned. `display=False`: draw the pseudo-image only if
        the fusion needs it (a UI that shows the results first draws it afterwards with
        `pseudo_image`). On a busy CPU a turn may search with its text alone and draw nothing
        (`steps` 0, see `[generator] cpu_step_budget`)."""
        k = self._check_k(k)
        if round_ < 0:
            raise ValueError(f"the dialog round starts at 0, got {round_}")
        liked, rejected = _weighed(liked), _weighed(rejected)
        with self.load.turn():
            return self._search(query, round_, k, liked, rejected, fusion, display)

    def _search(self, query: str, round_: int, k: int, liked: dict[str, float],
                rejected: dict[str, float], fusion: Fusion | None, display: bool) -> TurnResult:
        timings: dict[str, float] = {}
        start = tick = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal tick
            now = time.perf_counter()
            timings[stage] = (now - tick) * 1e3
            tick = now

        chosen = fusion or self.fusion

        def finish(t: np.ndarray, g: np.ndarray | None) -> _Finished:
            """Fusion, feedback and the search: on the model thread (FAISS's OpenMP too)."""
            # A fusion that needs the image falls back to the text when there is none.
            used = chosen if g is not None or not chosen.uses_image else TextOnly()
            began = time.perf_counter()
            fused = used(t, g, np.array([round_]))
            fused_at = time.perf_counter()
            query_vector = self._feedback(fused.query, liked, rejected)
            hits = self._hits(query_vector, k, exclude=set(rejected))
            return _Finished(used, fused, query_vector, hits, (fused_at - began) * 1e3,
                             (time.perf_counter() - fused_at) * 1e3)

        drawn, done, notice = None, None, None
        if self.generator is not None and chosen.uses_image:
            # One model call reads the text, draws, embeds, fuses and searches, batched with
            # every turn waiting for one: as two calls, the turns whose text was read in a
            # batch asked for their drawing a moment after the model thread had started
            # the next one without them, so drawings went in small batches (~2x the cost
            # per image) and concurrent turns took turns instead of sharing.
            try:
                drawn = self._draw(query, self.profile.generator.samples, finish)
            except GenerationError as e:  # expected failures only; a bug should surface
                notice = f"No pseudo-image this turn ({e}); searching with the text alone."
            lap("generate")
        if drawn is not None:
            if drawn.error is not None:
                raise drawn.error  # this turn's fusion or search failed, not the batch
            done = drawn.finished
            # `generate` is the wait for the batch and its drawing (and the other turns'
            # searches in it); the batch's text and embedding, and this turn's fusion and
            # search, are laps of their own.
            timings["generate"] -= (drawn.text_ms + drawn.embed_ms + done.fuse_ms
                                    + done.search_ms)
            timings = {"encode_text": drawn.text_ms, **timings, "embed_image": drawn.embed_ms,
                       "fuse": done.fuse_ms, "search": done.search_ms}
        else:
            t = self._text_query(query)
            lap("encode_text")
            if (notice is None and self.generator is not None and display
                    and self.profile.show_pseudo_image):
                try:  # only to be shown (a UI that shows results first passes display=False)
                    drawn = self._draw(query, 1)
                except GenerationError as e:
                    notice = f"No pseudo-image this turn ({e}); searching with the text alone."
                lap("generate")
            done = self.model_thread.run(finish, t, None)
            lap("fuse")  # with the wait for the model thread, as before
            timings["fuse"] -= done.search_ms
            timings["search"] = done.search_ms
        timings["total"] = (time.perf_counter() - start) * 1e3
        image, steps, routed = None, None, {}
        if drawn is not None:
            image = drawn.images[0] if drawn.images else None  # none: too busy to draw
            steps, routed = drawn.steps, self._routing(drawn.weights)
        return TurnResult(round_, query, done.hits, image, done.fusion.name, done.fused.row(0),
                          notice, timings, query_vector=done.query_vector, domains=routed,
                          steps=steps)

    def _routing(self, weights: np.ndarray | None) -> dict[str, float]:
        """Which image domains' adapters embedded the pseudo-image(s), on average (empty
        without domains)."""
        if weights is None or not weights.size:
            return {}
        mean = weights.mean(0)
        return {n: round(float(w), 2) for n, w in zip(self.encoder.domains, mean) if w > 0}

    def pseudo_image(self, query: str, steps: int | None = None) -> Image.Image | None:
        """The pseudo-image of `query` for the person to see: the one its turn searched with,
        if that turn drew one in `steps` steps (from the generator's cache), else drawn now;
        None without a generator or on failure."""
        if self.generator is None or not self.profile.show_pseudo_image:
            return None
        image = self.generator.cached(query, self.profile.generator.seed, steps)
        if image is not None:
            return image
        try:  # in the background: another session's search goes first
            return self._draw(query, 1, background=True).images[0]
        except GenerationError:
            return None

    def _text_rows(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.encoder.encode_texts(texts))

    def _text_query(self, query: str) -> np.ndarray:
        """[1, D] the query's text embedding, batched with concurrent turns' queries."""
        return np.stack(self.model_thread.batched(("encode_texts", id(self.encoder)),
                                                  self._text_rows, [query],
                                                  self.profile.encoder.batch_size))

    def _draw(self, query: str, n: int, finish: Callable | None = None,
              background: bool = False) -> _Drawn:
        """n pseudo-images of `query`, drawn in one batch with concurrent turns' queries. On a
        CPU a batch costs what its images cost one by one, so a big batch draws fewer steps
        (`[generator] cpu_step_budget`). With `finish`, the same model call also reads the
        queries' text, embeds the images and hands finish(text, mean image embedding): as
        calls of their own, each would wait behind the next batch of drawings, which the
        model thread starts the moment this one ends."""
        spec = self.profile.generator
        on_cpu = self.generator.device.type == "cpu"

        def draw(items: list[tuple[str, Callable | None]]) -> list[_Drawn]:
            if finish is not None:  # the text first: a text that fails costs no drawing
                began = time.perf_counter()
                rows = self._text_rows([q for q, _ in items])
                text_ms = (time.perf_counter() - began) * 1e3
            steps = self.generator.steps
            if on_cpu:  # the budget is shared by the turns being served
                steps = spec.steps_for(max(len(items), self.load.peak()) * n, steps)
            if not steps and finish is not None:  # too busy: each searches with its text
                return self._embed_and_finish([], 0, items, [slice(0)] * len(items), rows,
                                              text_ms)
            # A picture only to be shown is drawn whatever the load, in the fewest steps.
            steps = steps or min(spec.fewest_steps, self.generator.steps)
            images = self.generator.generate([q for q, _ in items], seed=spec.seed, n=n,
                                             steps=steps)
            mine = [slice(i * n, (i + 1) * n) for i in range(len(items))]
            if finish is None:
                return [_Drawn(images[s], steps) for s in mine]
            return self._embed_and_finish(images, steps, items, mine, rows, text_ms)
        # Everything `draw` uses: a batch runs its first caller's closure for all.
        key = ("generate", id(self.generator), id(self.encoder), spec, n, finish is not None)
        # Company in calls, one per turn whatever its number of samples.
        company = self.load.peak() if finish is not None and on_cpu else 0
        return self.model_thread.batched(key, draw, [(query, finish)], spec.batch_size,
                                         BACKGROUND if background else HEAVY, company,
                                         spec.gather_ms / 1e3)[0]

    def _embed_and_finish(self, images: list[Image.Image], steps: int,
                          items: list[tuple[str, Callable]], mine: list[slice],
                          rows: list[np.ndarray], text_ms: float) -> list[_Drawn]:
        """Embed a batch's pseudo-images and run each turn's search on its own, with its
        text row (`rows`, read in `text_ms`). A turn whose search fails gets its error
        back; the batch, already drawn, does not fail. No images (0 steps): each turn
        searches with its text alone."""
        began = time.perf_counter()
        vectors, weights = None, None
        if images:
            routed = getattr(self.encoder, "encode_images_routed", None)
            vectors, weights = (routed(images) if routed is not None
                                else (self.encoder.encode_images(images), None))
        embed_ms = (time.perf_counter() - began) * 1e3
        out = []
        for (_, finish), s, t in zip(items, mine, rows):
            drawn = _Drawn(images[s], steps, None if weights is None else weights[s], embed_ms,
                           text_ms)
            g = None
            if vectors is not None:  # the mean of K samples' embeddings: what they agree on
                g = vectors[s].mean(0, keepdims=True)
                g /= np.linalg.norm(g, axis=1, keepdims=True)
            try:
                drawn.finished = finish(t[None], g)
            except Exception as e:  # noqa: BLE001  (raised in that turn's own thread)
                drawn.error = e
            out.append(drawn)
        return out

    def search_image(self, image: Image.Image, k: int | None = None) -> list[Hit]:
        """Query by example: the gallery images nearest to `image` (the encoder's space)."""
        return self._hits(self.model_thread.run(self.encoder.encode_images, [image]),
                          self._check_k(k))

    def _check_k(self, k: int | None) -> int:
        k = self.profile.top_k if k is None else k
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        return k

    def _hits(self, query: np.ndarray, k: int, exclude: set[str] = frozenset()) -> list[Hit]:
        scores, ids = self.model_thread.run(self.index.search, query, k + len(exclude))
        found = [(float(s), int(i)) for s, i in zip(scores[0], ids[0])
                 if i >= 0 and self.index.paths[i] not in exclude]
        return [Hit(r, self.index.paths[i], s, i) for r, (s, i) in enumerate(found[:k])]

    def _index_ids(self) -> dict[str, int]:
        if self._ids is None:
            self._ids = {p: i for i, p in enumerate(self.index.paths)}
        return self._ids

    def _feedback(self, query: np.ndarray, liked: dict[str, float],
                  rejected: dict[str, float]) -> np.ndarray:
        """Rocchio relevance feedback in the embedding space."""
        if not liked and not rejected:
            return query
        fb = self.profile.feedback
        q = fb.alpha * query[0]
        for marks, weight in ((liked, fb.beta), (rejected, -fb.gamma)):
            mean = self._mean_of(marks)
            if mean is not None:  # paths no longer in the index are ignored
                q = q + weight * mean
        return (q / max(np.linalg.norm(q), 1e-12))[None].astype(np.float32)

    def _mean_of(self, weights: dict[str, float]) -> np.ndarray | None:
        """The weighted mean embedding of marked gallery paths; None if none is indexed."""
        ids = self._index_ids()
        known = [p for p in weights if p in ids]
        w = np.array([weights[p] for p in known], np.float64)
        if not w.sum() > 0:  # none indexed, or all weightless: no pull at all
            return None
        return (w @ self.index.vectors_of([ids[p] for p in known]) / w.sum()).astype(np.float32)

    def _marks(self, state: DialogState, kind: str) -> dict[str, float]:
        """Paths marked `kind`, a mark made `a` rounds before the newest of its kind weighed
        decay**a. Each kind's mean is normalised, so this sets how marks of one kind weigh
        against each other (older results were vaguer); a lone mark keeps its whole pull."""
        rounds = state.marked_rounds(kind)
        newest = max(rounds.values(), default=0)
        return {p: self.profile.feedback.decay ** (newest - r) for p, r in rounds.items()}

    def ask(self, state: DialogState, hits: list[Hit]) -> Asked | None:
        """The next clarifying question for what is on screen (None: nothing left to ask)."""
        if self.questioner is None or not hits:
            return None
        top = hits[: self.profile.questions.top_k]
        said = " / ".join(turn.answer for turn in state.turns)  # the person's own words
        return self.questioner.ask(self.index.vectors_of([h.id for h in top]), state.asked,
                                   said)

    def turn(self, state: DialogState, k: int | None = None,
             fusion: Fusion | None = None, display: bool = True) -> TurnResult:
        """The search for a dialog's latest round, with its clicks, and the next question."""
        if not state.turns:
            raise ValueError("the dialog has no turn yet: say what you are looking for")
        start = time.perf_counter()
        fitted = fit_turns(state.texts, self.encoder.count_tokens, self.encoder.max_tokens,
                           self.reformulate)
        query = self.reformulate(fitted.texts)
        reformulate_ms = (time.perf_counter() - start) * 1e3
        result = self.search(query, state.round, k, self._marks(state, "more"),
                             self._marks(state, "less"), fusion, display)
        result.timings_ms = {"reformulate": reformulate_ms, **result.timings_ms}
        if fitted.dropped or fitted.shortened:
            left_out = (f"round{'s' if len(fitted.dropped) > 1 else ''} "
                        f"{', '.join(str(i + 1) for i in fitted.dropped)}"
                        if fitted.dropped else "")
            cut = "the end of a long message" if fitted.shortened else ""
            what = " and ".join(x for x in (left_out, cut) if x)
            note = (f"The dialog is longer than the text encoder reads "
                    f"({self.encoder.max_tokens} tokens): left out {what}, keeping your "
                    "first description and the newest answers.")
            result.notice = f"{result.notice} {note}" if result.notice else note
        result.timings_ms["total"] += reformulate_ms
        start = time.perf_counter()
        asked = self.ask(state, result.hits)
        if asked is not None:
            result.question, result.question_id = asked.question.text, asked.question.id
            result.options = asked.options
        result.timings_ms["question"] = (time.perf_counter() - start) * 1e3
        result.timings_ms["total"] += result.timings_ms["question"]
        return result

    def session(self, state: DialogState | dict | None = None,
                fusion: str | None = None, display: bool = True) -> SearchSession:
        """A person's search; `fusion` names one of `fusions` for this session only;
        `display=False` leaves drawing the pseudo-image to the caller (`pseudo_image`)."""
        if not isinstance(state, DialogState):
            state = DialogState.from_dict(state)
        chosen = None
        if fusion:
            if fusion not in self.fusions:
                raise ValueError(f"unknown fusion {fusion!r}; this app offers "
                                 f"{sorted(self.fusions)}")
            chosen = self.fusions[fusion]
        return SearchSession(self, state, chosen, display)
