"""Training corpora: rendered world images with texts and their cached text-tower states.

The text tower is locked, so its token states are computed once per text and stored packed
(fp16, one row per token) instead of being recomputed every epoch; on two CPU cores that is
the difference between minutes and hours. The states are those of the hidden layer the
encoder's head reads (the last, or one below the tower layers it owns a copy of).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from world.captions import full_caption, partial_caption
from world.dialogs import make_dialog, round_query
from world.phrasings import describe
from world.render import RENDER_VERSION, render
from world.scene import sample_scene, split_seed
from world.varied import Extra, unknown_word_pool


@dataclass
class Corpus:
    images: torch.Tensor  # [N, 3, S, S] uint8
    text_scene: torch.Tensor  # [T] index of the scene each text describes
    text_kind: torch.Tensor  # [T] 0 = full caption, 1 = partial caption, 2 = dialog prefix,
    # 3 = free description, 4 = partial free description, 5 and 6 = the same in varied
    # wording (world/varied.py)
    states: torch.Tensor  # [sum of lengths, W] fp16, packed
    offsets: torch.Tensor  # [T + 1] start of each text's rows in `states`
    texts: list[str]

    def batch_states(self, text_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded float32 states [B, L, W] and mask [B, L] for the given texts."""
        spans = [(int(self.offsets[i]), int(self.offsets[i + 1])) for i in text_ids]
        length = max(b - a for a, b in spans)
        out = torch.zeros(len(spans), length, self.states.shape[1])
        mask = torch.zeros(len(spans), length, dtype=torch.bool)
        for row, (a, b) in enumerate(spans):
            out[row, : b - a] = self.states[a:b].float()
            mask[row, : b - a] = True
        return out, mask

    def save(self, path: str | Path) -> None:
        torch.save(self.__dict__, path)

    @classmethod
    def load(cls, path: str | Path) -> Corpus:
        return cls(**torch.load(path, weights_only=False))


def scene_texts(seed: int, extra: Extra | None = None) -> list[tuple[int, str]]:
    """(kind, text) pairs for one scene: a full caption, a partial view of it, and a full
    and a partial free description (world/phrasings.py, training forms only); with `extra`,
    two more full ones and a partial one in its wider wording (world/varied.py)."""
    rng = random.Random(seed * 13 + 5)
    scene = sample_scene(seed)
    texts = [(0, full_caption(scene, rng))]
    if rng.random() < 0.5:
        texts.append((1, partial_caption(scene, rng)[0]))
    else:
        texts.append((2, round_query(make_dialog(scene, rng), rng.randint(1, 4))))
    texts.append((3, describe(scene, rng)))
    texts.append((4, describe(scene, rng, partial=True)))
    if extra is not None:  # drawn after the others, which stay as they were
        texts += [(5, describe(scene, rng, extra=extra)), (5, describe(scene, rng, extra=extra)),
                  (6, describe(scene, rng, partial=True, extra=extra))]
    return texts


def render_split(n: int, split: str, image_size: int) -> tuple[list[int], torch.Tensor]:
    """Seeds and rendered images (uint8 [n, 3, S, S]) of the first `n` scenes of `split`."""
    seeds = [split_seed(split, i) for i in range(n)]
    images = np.stack([np.asarray(render(sample_scene(s), image_size))
                       for s in tqdm(seeds, desc="render", unit="scene")])
    return seeds, torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def encode_packed(tower, texts: list[str], batch_size: int = 128, desc: str = "text tower",
                  layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Every text's token states (hidden `layer`), packed: (states [sum of lengths, W] fp16,
    offsets [T + 1])."""
    # Sorting by length keeps padding (wasted tower compute) small.
    order = sorted(range(len(texts)), key=lambda j: len(texts[j]))
    chunks: list[torch.Tensor | None] = [None] * len(texts)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        ids = order[start:start + batch_size]
        states, mask = tower([texts[j] for j in ids], layer)
        for row, j in enumerate(ids):
            chunks[j] = states[row, mask[row]].half()
    lengths = torch.tensor([len(c) for c in chunks])
    return torch.cat(chunks), torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])


def cached(path: Path, build: Callable[[], Any], load: Callable[[Path], Any]) -> Any:
    """`load(path)` when it exists, else `build()` saved there atomically (a killed run
    never leaves half a file under the real name)."""
    if path.exists():
        return load(path)
    corpus = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    corpus.save(tmp)
    tmp.replace(path)
    return corpus


def build_corpus(n: int, split: str, tower, image_size: int = 64,
                 batch_size: int = 128, layer: int = -1) -> Corpus:
    """Render `n` scenes of `split` and encode their texts with the locked `tower` (the
    states of hidden `layer`); the varied descriptions' unknown words come from the tower's
    own vocabulary."""
    seeds, images = render_split(n, split, image_size)
    extra = Extra(unknown_words=unknown_word_pool(tower.tokenizer.get_vocab()))
    pairs = [(i, kind, text) for i, s in enumerate(seeds) for kind, text in scene_texts(s, extra)]
    texts = [p[2] for p in pairs]
    states, offsets = encode_packed(tower, texts, batch_size, layer=layer)
    return Corpus(images=images, text_scene=torch.tensor([p[0] for p in pairs]),
                  text_kind=torch.tensor([p[1] for p in pairs]), states=states,
                  offsets=offsets, texts=texts)


def cached_corpus(n: int, split: str, tower, image_size: int, cache_dir: str | Path,
                  layer: int = -1) -> Corpus:
    """`build_corpus`, stored under `cache_dir` and reused by later runs."""
    # v7: 313 attribute words, not 113 (varied.MORE_WORDS); v6: more attribute words; v5:
    # corners said as two edges; v4: varied wording (world/varied.py); v3: broad training
    # vocabulary; v2: the first free descriptions; r: the renderer's version. Each keeps an
    # older cache from being read as this one.
    name = f"corpus-v7-{split}-{n}-{image_size}px" + (f"-layer{layer}" if layer != -1 else "")
    folder = Path(cache_dir)
    path = folder / f"{name}-r{RENDER_VERSION}.pt"
    # Texts do not depend on the renderer: an older render's corpus keeps its text-tower
    # states (the slow part) and only has its images drawn again. (Render 1 had no suffix.)
    older = [folder / f"{name}-r{v}.pt" for v in range(RENDER_VERSION - 1, 1, -1)]
    source = next((p for p in [*older, folder / f"{name}.pt"] if p.exists()), None)
    if not path.exists() and source is not None:
        return cached(path, lambda: rerendered(Corpus.load(source), split, image_size),
                      Corpus.load)
    return cached(path, lambda: build_corpus(n, split, tower, image_size, layer=layer),
                  Corpus.load)


def rerendered(corpus: Corpus, split: str, image_size: int) -> Corpus:
    """`corpus` with its images drawn by today's renderer (texts and states kept)."""
    corpus.images = render_split(len(corpus.images), split, image_size)[1]
    return corpus
