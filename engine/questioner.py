"""Clarifying questions chosen from what is on screen, never from ground truth.

A bank (profiles/questions/*.toml) lists questions, each with candidate answers and a
prompt that turns an answer into text. After a turn, every candidate answer is scored
against each of the top K results by the encoder's text-image similarity, giving a soft
assignment of each result to the answers. A question is worth asking when the results
confidently disagree on it: the expected information gain, the entropy of the mean
assignment minus the mean entropy of each result's assignment. (DESIGN and the issue say
"highest entropy of the soft assignment"; subtracting each result's own uncertainty keeps a
question that no result can be read for, whose mean assignment is flat too, from looking
as good as one that splits the results. The two agree when results are assigned
confidently.) The answers offered are the likeliest ones among the results.

A question is not asked when the person's own words already answer it: a bank may list how
people say an answer (`said`, e.g. "{} background"), and "a red circle on a blue background"
then leaves "what color is the background?" unasked, where results that all show blue
backgrounds could still look split to a noisy text-image score.
"""

from __future__ import annotations

import random
import re
import tomllib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from engine.paths import profiles_dir


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    prompt: str  # "{}" marks where the answer goes
    answers: tuple[str, ...]
    said: tuple[str, ...] = ()  # how a person states an answer unasked ("{} background")

    def stated_in(self, text: str) -> bool:
        """Whether `text` (the person's words) states one of the answers as `said` says."""
        return bool(self.said) and self._said.search(text) is not None

    @cached_property
    def _said(self) -> re.Pattern:
        answer = "(?:" + "|".join(re.escape(a) for a in self.answers) + ")"
        forms = (re.escape(form).replace(re.escape("{}"), answer) for form in self.said)
        # Whole words: "blue" is not said in "blues"; a form may end in punctuation.
        return re.compile(r"(?<!\w)(?:" + "|".join(forms) + r")(?!\w)", re.IGNORECASE)


@dataclass
class Asked:
    question: Question
    options: list[str]  # answers to offer as buttons, likeliest first
    gain: float  # expected information gain in nats (0 for the random baseline)


def load_bank(name_or_path: str) -> list[Question]:
    """A shipped bank by name (`world` -> profiles/questions/world.toml) or a TOML path."""
    path = Path(name_or_path).expanduser()
    if not path.suffix:
        path = profiles_dir() / "questions" / f"{name_or_path}.toml"
    if not path.is_file():
        shipped = sorted(p.stem for p in (profiles_dir() / "questions").glob("*.toml"))
        raise FileNotFoundError(f"no question bank {name_or_path!r} (shipped: {shipped}, or "
                                "give a TOML path)")
    questions = tomllib.loads(path.read_text()).get("question", [])
    bank = []
    for q in questions:
        if not (q.get("id") and q.get("text") and "{}" in q.get("prompt", "")
                and len(q.get("answers", [])) >= 2
                and all("{}" in form for form in q.get("said", []))):
            raise ValueError(f"{path}: every [[question]] needs id, text, a prompt with {{}} "
                             f"and at least two answers; each `said` form needs {{}} too "
                             f"(got {q})")
        bank.append(Question(q["id"], q["text"], q["prompt"], tuple(q["answers"]),
                             tuple(q.get("said", ()))))
    return bank


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(axis)


class Questioner:
    """`ask(result_vectors, asked_ids, said)` -> the next question, or None when every one
    is asked or answered in what the person said."""

    def __init__(self, bank: list[Question], encoder, temperature: float = 0.05,
                 strategy: str = "information", options: int = 3, seed: int = 0):
        if strategy not in ("information", "random"):
            raise ValueError(f"questioner strategy must be information or random, not "
                             f"{strategy!r}")
        self.bank, self.strategy, self.options = bank, strategy, options
        self.temperature = temperature
        self.rng = random.Random(seed)
        # Answer embeddings are computed once per process: the per-turn cost is one
        # [K, D] x [D, answers] product per question.
        self.answer_vectors = [encoder.encode_texts([q.prompt.format(a) for a in q.answers])
                               for q in bank]

    def assignments(self, vectors: np.ndarray) -> list[np.ndarray]:
        """Per question: [K, answers] soft assignment of each result to the answers."""
        out = []
        for answers in self.answer_vectors:
            logits = vectors @ answers.T / self.temperature
            logits -= logits.max(1, keepdims=True)
            p = np.exp(logits)
            out.append(p / p.sum(1, keepdims=True))
        return out

    def ask(self, vectors: np.ndarray, asked: list[str], said: str = "") -> Asked | None:
        open_ = [i for i, q in enumerate(self.bank)
                 if q.id not in asked and not q.stated_in(said)]
        if not open_ or len(vectors) == 0:
            return None
        assign = self.assignments(vectors)
        if self.strategy == "random":
            i, gain = self.rng.choice(open_), 0.0
        else:
            gains = {i: float(entropy(assign[i].mean(0)) - entropy(assign[i]).mean())
                     for i in open_}
            i = max(open_, key=lambda j: gains[j])
            gain = gains[i]
        likely = np.argsort(-assign[i].mean(0))[: self.options]
        q = self.bank[i]
        return Asked(q, [q.answers[j] for j in likely], gain)
