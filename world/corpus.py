"""Training corpora: rendered world images with texts and their cached text-tower states.

The text tower is locked, so its token states are computed once per text and stored packed
(fp16, one row per token) instead of being recomputed every epoch; on two CPU cores that is
the difference between minutes and hours. The states are those of the hidden layer the
encoder's head reads (the last, or one below the tower layers it owns a copy of).

`itir train-encoder --part image` reads no states: its text side is frozen, so each text is
embedded once (`EmbeddedCorpus`). Without the states (about 4 GB for 20,000 scenes' texts) a
corpus can hold five times the scenes, and the image tower is what needs more of them.
"""

from __future__ import annotations

import hashlib
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


class Saved:
    """A dataclass of tensors and lists saved as one file (`cached` writes and reads it)."""

    def save(self, path: str | Path) -> None:
        torch.save(self.__dict__, path)

    @classmethod
    def load(cls, path: str | Path):
        return cls(**torch.load(path, weights_only=False))


@dataclass
class Corpus(Saved):
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


# The texts' version, in every cache name: v7: 313 attribute words, not 113
# (varied.MORE_WORDS); v6: more attribute words; v5: corners said as two edges; v4: varied
# wording (world/varied.py); v3: broad training vocabulary; v2: the first free descriptions.
TEXTS_VERSION = "v7"
SCENE_TEXTS = 7  # texts `scene_texts` gives a scene with `extra`
TEXTS_PER_SCENE = 3  # an EmbeddedCorpus's default: the full caption and two others
PICK_VERSION = "pick1"  # `picked_texts`' rule, in EmbeddedCorpus cache names


@dataclass
class EmbeddedCorpus(Saved):
    """Rendered scenes and some of their texts, embedded once by a frozen text side."""
    images: torch.Tensor  # [N, 3, S, S] uint8
    text_scene: torch.Tensor  # [T] index of the scene each text describes
    text_embeddings: torch.Tensor  # [T, D] float32
    texts: list[str]
    text_identity: str  # the text side that embedded them



def check_texts_per_scene(k: int) -> None:
    if not 1 <= k <= SCENE_TEXTS:
        raise ValueError(f"texts per scene must be 1..{SCENE_TEXTS} (a scene has "
                         f"{SCENE_TEXTS}), not {k}")


def picked_texts(seed: int, extra: Extra, k: int) -> list[str]:
    """The full caption and `k - 1` other texts of `scene_texts`, drawn by the scene's seed."""
    texts = [text for _, text in scene_texts(seed, extra)]
    return [texts[0], *random.Random(seed).sample(texts[1:], k - 1)]


def build_embedded_corpus(n: int, split: str, embed: Callable[[list[str]], np.ndarray],
                          text_identity: str, vocabulary, image_size: int = 64,
                          texts_per_scene: int = TEXTS_PER_SCENE, chunk: int = 1024
                          ) -> EmbeddedCorpus:
    """Render `n` scenes of `split` and `embed` `texts_per_scene` of each one's texts (in
    chunks of similar length, with progress). `vocabulary`: the tokenizer's, for the varied
    descriptions' unknown words, as `build_corpus` draws them."""
    check_texts_per_scene(texts_per_scene)
    seeds, images = render_split(n, split, image_size)
    extra = Extra(unknown_words=unknown_word_pool(vocabulary))
    texts = [t for s in seeds for t in picked_texts(s, extra, texts_per_scene)]
    # Chunks of similar length pad little; each row goes back to its text's place.
    order = np.argsort([len(t) for t in texts], kind="stable")
    embedded = np.concatenate([embed([texts[j] for j in order[a:a + chunk]])
                               for a in tqdm(range(0, len(order), chunk), desc="embed texts",
                                             unit="chunk")])
    vectors = np.empty_like(embedded, dtype=np.float32)
    vectors[order] = embedded
    return EmbeddedCorpus(images=images,
                          text_scene=torch.arange(n).repeat_interleave(texts_per_scene),
                          text_embeddings=torch.from_numpy(vectors), texts=texts,
                          text_identity=text_identity)


def cached_embedded_corpus(n: int, split: str, encoder, image_size: int, cache_dir: str | Path,
                           texts_per_scene: int = TEXTS_PER_SCENE) -> EmbeddedCorpus:
    """`build_embedded_corpus` with `encoder.encode_texts`, stored under `cache_dir` by the
    encoder's text identity (its runtime's "+int8" included) and reused by later runs."""
    check_texts_per_scene(texts_per_scene)
    tag = hashlib.sha256(encoder.text_identity.encode()).hexdigest()[:12]
    name = (f"embedded-{TEXTS_VERSION}-{PICK_VERSION}-{split}-{n}-{image_size}px-"
            f"{texts_per_scene}texts-{tag}")
    return cached(Path(cache_dir) / f"{name}-r{RENDER_VERSION}.pt",
                  lambda: build_embedded_corpus(
                      n, split, encoder.encode_texts, encoder.text_identity,
                      encoder.text_tower.tokenizer.get_vocab(), image_size, texts_per_scene),
                  EmbeddedCorpus.load)


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
    # TEXTS_VERSION and r, the renderer's version: each keeps an older cache from being read
    # as this one.
    name = (f"corpus-{TEXTS_VERSION}-{split}-{n}-{image_size}px"
            + (f"-layer{layer}" if layer != -1 else ""))
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
