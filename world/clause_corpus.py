"""The generator's training corpus: scenes, what people say about them, read clause by clause.

The generator reads a query as clauses (dialog.query.split_clauses). Dialog rounds recur
across scenes ("what color is the background? blue"), so the text tower reads each distinct
clause once and a text is a list of clause ids: eleven-round dialogs cost little more to
cache than captions.

Texts per scene are what the app is asked: a full caption, a partial caption, a free full
description and a free partial one (world.phrasings, training forms only), and a dialog cut
at a random round and at round 10; in a third of the dialogs the first message is a free
description rather than a template caption. The varied corpus (v3, `itir tune-layout`) adds a
full and a partial description in world/varied.py's wider training wording.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from dialog.query import split_clauses
from world.captions import full_caption, partial_caption
from world.corpus import Saved, cached, encode_packed, render_split
from world.dialogs import ROUNDS, make_dialog, round_query
from world.phrasings import describe
from world.render import RENDER_VERSION
from world.scene import sample_scene
from world.varied import Extra, unknown_word_pool

# What each text is (`ClauseCorpus.text_kind` indexes this; the encoder's corpus in
# world/corpus.py numbers its own kinds otherwise).
KINDS = ("caption", "partial caption", "description", "partial description", "dialog",
         "whole dialog", "dialog opened freely", "whole dialog opened freely", "varied",
         "partial varied")
# The texts whose every word is a template's: what a parser trained on them reads right.
TEMPLATE_KINDS = tuple(KINDS.index(k) for k in ("caption", "partial caption", "dialog",
                                                 "whole dialog"))


@dataclass
class ClauseCorpus(Saved):
    seeds: torch.Tensor  # [N] scene seeds
    images: torch.Tensor  # [N, 3, S, S] uint8
    texts: list[str]
    text_scene: torch.Tensor  # [T] row of the scene each text describes
    text_clauses: torch.Tensor  # [sum of clause counts] clause ids, packed
    text_offsets: torch.Tensor  # [T + 1]
    clause_states: torch.Tensor  # [sum of clause lengths, W] fp16, packed
    clause_offsets: torch.Tensor  # [U + 1]
    text_kind: torch.Tensor | None = None  # [T] index into KINDS; caches before v3 lack it

    def clauses_of(self, text_id: int) -> list[torch.Tensor]:
        ids = self.text_clauses[self.text_offsets[text_id]:self.text_offsets[text_id + 1]]
        return [self.clause_states[self.clause_offsets[c]:self.clause_offsets[c + 1]].float()
                for c in ids.tolist()]


def scene_texts(seed: int, extra: Extra | None = None) -> list[tuple[int, str]]:
    """(kind, text) pairs the generator trains on for one scene (see the module docstring);
    with `extra`, two varied descriptions after the six, which stay as they were."""
    rng = random.Random(seed * 17 + 3)
    scene = sample_scene(seed)
    dialog = make_dialog(scene)
    free = rng.random() < 1 / 3
    if free:
        dialog = [describe(scene, rng, partial=True), *dialog[1:]]
    opened = " opened freely" if free else ""
    texts = [("caption", full_caption(scene, rng)),
             ("partial caption", partial_caption(scene, rng)[0]),
             ("description", describe(scene, rng)),
             ("partial description", describe(scene, rng, partial=True)),
             ("dialog" + opened, round_query(dialog, rng.randint(0, ROUNDS - 1))),
             ("whole dialog" + opened, round_query(dialog, ROUNDS))]
    if extra is not None:
        texts += [("varied", describe(scene, rng, extra=extra)),
                  ("partial varied", describe(scene, rng, partial=True, extra=extra))]
    return [(KINDS.index(kind), text) for kind, text in texts]


def build_clause_corpus(n: int, split: str, tower, image_size: int = 32,
                        batch_size: int = 256, varied: bool = False) -> ClauseCorpus:
    """`varied`: add the two descriptions in wider wording, whose unknown words come from the
    tower's own vocabulary (as the encoder's corpus does)."""
    seeds, images = render_split(n, split, image_size)
    extra = Extra(unknown_words=unknown_word_pool(tower.tokenizer.get_vocab())) if varied else None
    texts, text_scene, text_kind = [], [], []
    for row, seed in enumerate(seeds):
        for kind, text in scene_texts(seed, extra):
            texts.append(text)
            text_scene.append(row)
            text_kind.append(kind)
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
        clause_states=states, clause_offsets=offsets, text_kind=torch.tensor(text_kind))


def cached_clause_corpus(n: int, split: str, tower, image_size: int,
                         cache_dir: str | Path, varied: bool = False) -> ClauseCorpus:
    """`build_clause_corpus`, stored under `cache_dir` and reused by later runs."""
    # v2: broad training vocabulary; v3: v2 plus the varied descriptions, in world/varied.py's
    # wording as of world/corpus.py's TEXTS_VERSION v7 (bump both when it changes); r: the
    # renderer's version. Each keeps an older cache from being read as this one.
    version = 3 if varied else 2
    path = Path(cache_dir) / f"clauses-v{version}-{split}-{n}-{image_size}px-r{RENDER_VERSION}.pt"
    return cached(path, lambda: build_clause_corpus(n, split, tower, image_size, varied=varied),
                  ClauseCorpus.load)
