"""The generator's training corpus: scenes, what people say about them, read clause by clause.

The generator reads a query as clauses (dialog.query.split_clauses). Dialog rounds recur
across scenes ("what color is the background? blue"), so the text tower reads each distinct
clause once and a text is a list of clause ids: eleven-round dialogs cost little more to
cache than captions.

Texts per scene are what the app is asked: a full caption, a partial caption, a free full
description and a free partial one (world.phrasings, training forms only), and a dialog cut
at a random round and at round 10; in a third of the dialogs the first message is a free
description rather than a template caption.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from dialog.query import split_clauses
from world.captions import full_caption, partial_caption
from world.corpus import cached, encode_packed, render_split
from world.dialogs import ROUNDS, make_dialog, round_query
from world.phrasings import describe
from world.render import RENDER_VERSION
from world.scene import sample_scene


@dataclass
class ClauseCorpus:
    seeds: torch.Tensor  # [N] scene seeds
    images: torch.Tensor  # [N, 3, S, S] uint8
    texts: list[str]
    text_scene: torch.Tensor  # [T] row of the scene each text describes
    text_clauses: torch.Tensor  # [sum of clause counts] clause ids, packed
    text_offsets: torch.Tensor  # [T + 1]
    clause_states: torch.Tensor  # [sum of clause lengths, W] fp16, packed
    clause_offsets: torch.Tensor  # [U + 1]

    def clauses_of(self, text_id: int) -> list[torch.Tensor]:
        ids = self.text_clauses[self.text_offsets[text_id]:self.text_offsets[text_id + 1]]
        return [self.clause_states[self.clause_offsets[c]:self.clause_offsets[c + 1]].float()
                for c in ids.tolist()]

    def save(self, path: str | Path) -> None:
        torch.save(self.__dict__, path)

    @classmethod
    def load(cls, path: str | Path) -> ClauseCorpus:
        return cls(**torch.load(path, weights_only=False))


def scene_texts(seed: int) -> list[str]:
    """What the generator trains on for one scene (see the module docstring)."""
    rng = random.Random(seed * 17 + 3)
    scene = sample_scene(seed)
    dialog = make_dialog(scene)
    if rng.random() < 1 / 3:
        dialog = [describe(scene, rng, partial=True), *dialog[1:]]
    return [full_caption(scene, rng), partial_caption(scene, rng)[0],
            describe(scene, rng), describe(scene, rng, partial=True),
            round_query(dialog, rng.randint(0, ROUNDS - 1)), round_query(dialog, ROUNDS)]


def build_clause_corpus(n: int, split: str, tower, image_size: int = 32,
                        batch_size: int = 256) -> ClauseCorpus:
    seeds, images = render_split(n, split, image_size)
    texts, text_scene = [], []
    for row, seed in enumerate(seeds):
        for text in scene_texts(seed):
            texts.append(text)
            text_scene.append(row)
    vocab: dict[str, int] = {}
    text_clauses = [[vocab.setdefault(c, len(vocab)) for c in split_clauses(t) or [""]]
                    for t in texts]
    states, offsets = encode_packed(tower, list(vocab), batch_size, "text tower (clauses)")
    counts = torch.tensor([len(c) for c in text_clauses])
    return ClauseCorpus(
        seeds=torch.tensor(seeds), images=images, texts=texts,
        text_scene=torch.tensor(text_scene),
        text_clauses=torch.tensor([c for cs in text_clauses for c in cs]),
        text_offsets=torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
        clause_states=states, clause_offsets=offsets)


def cached_clause_corpus(n: int, split: str, tower, image_size: int,
                         cache_dir: str | Path) -> ClauseCorpus:
    """`build_clause_corpus`, stored under `cache_dir` and reused by later runs."""
    # v2: broad training vocabulary; r: the renderer's version. Either keeps an older cache
    # from being read as this one.
    path = Path(cache_dir) / f"clauses-v2-{split}-{n}-{image_size}px-r{RENDER_VERSION}.pt"
    return cached(path, lambda: build_clause_corpus(n, split, tower, image_size),
                  ClauseCorpus.load)
