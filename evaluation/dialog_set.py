"""Dialog benchmarks in ChatIR's format, embedded once and cached on disk.

A dialog file is a JSON list of {"img": target path, "dialog": [caption, "q? a", ...]}; a
corpus file a JSON list of image paths (ChatIR's own files, and what `itir world build`
writes). Training a fusion and comparing fusions both need, for every dialog and round, the
text embedding t of the round's query and the embedding g of the pseudo-image drawn from it,
plus the corpus images' embeddings. Drawing pseudo-images is the slow part (hours on a CPU
for thousands of dialogs), so everything is computed in chunks that are saved as they finish:
an interrupted run goes on where it stopped, and a cache is reused by every later run.
A small generator's pseudo-images are kept too (the world's are 32x32 pixels), so a new
image tower only re-embeds them.

Cache keys name exactly what a number depends on: the dialogs (content), the reformulation,
the encoder (queries: `text_identity`, which an image-tower fine-tune leaves unchanged;
images: `image_identity`, which a text-head fine-tune leaves unchanged) and the generator
with its steps, guidance and seed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from dialog.query import chatir_query


class DialogFileError(ValueError):
    """A dialog or corpus file is not in ChatIR's format, or names images it cannot find."""


@dataclass
class DialogSet:
    dialogs: list[list[str]]  # each: caption and answered questions, all the same length
    targets: np.ndarray  # [N] index into `corpus` of each dialog's target
    corpus: list[str]  # image paths as the corpus file writes them
    root: Path  # relative image paths resolve against it
    source: str  # the dialog file, for reports
    key: str  # digest of the whole file: caches are keyed by it, whatever `limit` keeps
    whole_file: list[list[str]]  # every dialog in the file (cached chunks may pass `limit`)

    @property
    def total(self) -> int:
        return len(self.whole_file)

    @property
    def rounds(self) -> int:
        return len(self.dialogs[0])

    def image_path(self, i: int) -> Path:
        return self.root / self.corpus[i]


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DialogFileError(f"{what} file {path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DialogFileError(f"{what} file {path} is not JSON: {e}") from None


def read_dialog_set(dialogs_file: str | Path, corpus_file: str | Path | None = None,
                    images_root: str | Path | None = None, limit: int | None = None
                    ) -> DialogSet:
    """Read a ChatIR dialog file and its corpus (by default corpus.json beside it, else the
    dialogs' own targets). Image paths resolve against `images_root`, by default the dialog
    file's folder, as `itir world build` writes them."""
    dialogs_file = Path(dialogs_file)
    raw = _read_json(dialogs_file, "dialog")
    if not isinstance(raw, list) or not raw:
        raise DialogFileError(f"{dialogs_file} should be a non-empty JSON list of "
                              '{"img": ..., "dialog": [...]} objects')
    for n, item in enumerate(raw):
        ok = (isinstance(item, dict) and isinstance(item.get("img"), str)
              and isinstance(item.get("dialog"), list) and item["dialog"]
              and all(isinstance(t, str) for t in item["dialog"]))
        if not ok:
            raise DialogFileError(f"{dialogs_file}: entry {n} is not "
                                  '{"img": "path", "dialog": ["caption", "q? a", ...]}')
        if len(item["dialog"]) != len(raw[0]["dialog"]):
            raise DialogFileError(f"{dialogs_file}: entry {n} has {len(item['dialog'])} "
                                  f"strings, entry 0 has {len(raw[0]['dialog'])}; every dialog "
                                  "needs the same number of rounds")
    key = hashlib.sha256(dialogs_file.read_bytes()).hexdigest()[:16]
    whole_file = [item["dialog"] for item in raw]
    raw = raw[:limit] if limit else raw
    if corpus_file is None and (dialogs_file.parent / "corpus.json").is_file():
        corpus_file = dialogs_file.parent / "corpus.json"
    corpus = (_read_json(Path(corpus_file), "corpus") if corpus_file is not None
              else list(dict.fromkeys(item["img"] for item in raw)))
    if not isinstance(corpus, list) or not all(isinstance(p, str) for p in corpus):
        raise DialogFileError(f"{corpus_file} should be a JSON list of image paths")
    where = {p: i for i, p in enumerate(corpus)}
    missing = [item["img"] for item in raw if item["img"] not in where]
    if missing:
        raise DialogFileError(f"{len(missing)} dialog targets are not in the corpus "
                              f"{corpus_file} (first: {missing[0]!r})")
    root = Path(images_root) if images_root is not None else dialogs_file.parent
    return DialogSet([item["dialog"] for item in raw],
                     np.array([where[item["img"]] for item in raw]), corpus, root,
                     str(dialogs_file), key, whole_file)


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def chunked(folder: Path, n: int, chunk: int, compute: Callable[[int, int], np.ndarray],
            desc: str, total: int | None = None) -> np.ndarray:
    """Rows 0..n-1 of `compute(start, stop)` over the chunks of range(total), each chunk
    saved to `folder` as it finishes (atomically) and read back instead of recomputed by
    later runs. Chunks are whole even when `n` ends inside one, so a later run that wants
    more rows of the same `total` reuses every chunk this one wrote."""
    total = n if total is None else total
    folder.mkdir(parents=True, exist_ok=True)
    starts = range(0, n, chunk)
    done = sum((folder / f"{s:08d}.npy").exists() for s in starts)
    parts = []
    with tqdm(total=len(starts), initial=done, desc=desc, unit="chunk") as bar:
        for start in starts:
            path = folder / f"{start:08d}.npy"
            if path.exists():
                parts.append(np.load(path))
                continue
            part = compute(start, min(start + chunk, total))
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, part)
            os.replace(tmp, path)
            parts.append(part)
            bar.update()
    return np.concatenate(parts)[:n]


def _load_images(ds: DialogSet, ids: range) -> list[Image.Image]:
    images = []
    for i in ids:
        try:
            with Image.open(ds.image_path(i)) as im:
                images.append(im.convert("RGB"))
        except (OSError, ValueError) as e:
            raise DialogFileError(
                f"corpus image {ds.image_path(i)} could not be read ({e}); image paths resolve "
                "against --images ROOT (default: the dialog file's folder)") from None
    return images


@dataclass
class DialogEmbeddings:
    text: np.ndarray  # [N, R, D] text embedding of each round's query
    image: np.ndarray | None  # [N, R, K, D] embeddings of K pseudo-images per round
    corpus: np.ndarray  # [M, D]
    targets: np.ndarray  # [N]

    def pseudo(self, k: int = 1) -> np.ndarray:
        """g [N, R, D]: the normalised mean of the first k pseudo-images' embeddings."""
        mean = self.image[:, :, :k].astype(np.float32).mean(2)
        return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def default_cache() -> Path:
    from engine.paths import home

    return home() / "dialog-cache"


def _round_queries(ds: DialogSet) -> list[str]:
    """Every round's query, dialog-major, for the whole file: a cached chunk is computed
    whole even where `limit` ends inside it, so later runs can reuse it."""
    return [chatir_query(d[: r + 1]) for d in ds.whole_file for r in range(ds.rounds)]


def embed_queries(ds: DialogSet, encoder, cache: Path) -> np.ndarray:
    """[N, R, D] text embeddings of every round's query."""
    queries, rounds = _round_queries(ds), ds.rounds

    def texts(a: int, b: int) -> np.ndarray:
        return encoder.encode_texts(queries[a * rounds:b * rounds]).reshape(b - a, rounds, -1)

    return chunked(cache / f"text-{digest(ds.key, 'chatir', encoder.text_identity)}",
                   len(ds.dialogs), 256, texts, "embed queries", ds.total)


# Pseudo-images at most this many pixels on a side are kept on disk (the world's 32x32 take
# 3 KB each); a hub generator's 512x512 would take gigabytes per benchmark.
KEEP_PIXELS_UP_TO = 64
DRAW_BATCH = 64  # images per generator call while drawing a benchmark's pseudo-images


def _drawing(generator) -> tuple:
    """What a pseudo-image's pixels depend on, for cache keys."""
    return (generator.identity, generator.steps, generator.guidance,
            getattr(generator, "size", None))


def draw_pseudo_images(ds: DialogSet, generator, k: int, seed: int, cache: Path,
                       chunk: int = 32) -> Callable[[int, int], np.ndarray]:
    """`drawn(a, b)`: uint8 pixels [b - a, R, k, S, S, 3] of dialogs a..b-1's pseudo-images
    (seeds seed..seed+k-1, as the engine draws them). A small generator's chunks are drawn
    once and kept: the pixels depend on the generator only, so a new image tower re-embeds
    them in seconds instead of drawing them again (hours on a CPU)."""
    queries, rounds = _round_queries(ds), ds.rounds
    folder = cache / f"drawn-{digest(ds.key, 'chatir', *_drawing(generator), seed, k, chunk)}"
    keep = (getattr(generator, "size", None) or KEEP_PIXELS_UP_TO + 1) <= KEEP_PIXELS_UP_TO

    def drawn(a: int, b: int) -> np.ndarray:
        path = folder / f"{a:08d}.npy"
        if path.exists():
            return np.load(path)[: b - a]
        stop = min(a + chunk, ds.total) if keep else b  # kept chunks are whole, as `chunked`'s
        prompts, images = queries[a * rounds:stop * rounds], []
        # About 64 images per generator call: the world generator draws 6-7 images a second
        # on two cores in batches of 16-64, but under 3 in one of 256 (k = 4 x 64 prompts).
        step = max(1, DRAW_BATCH // k)
        for i in range(0, len(prompts), step):
            images += generator.generate(prompts[i:i + step], seed=seed, n=k)
        pixels = np.stack([np.asarray(im.convert("RGB")) for im in images])
        pixels = pixels.reshape(stop - a, rounds, k, *pixels.shape[1:])
        if keep:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, pixels)
            os.replace(tmp, path)
        return pixels[: b - a]

    return drawn


def embed_pseudo_images(ds: DialogSet, encoder, generator, k: int, seed: int, cache: Path,
                        chunk: int = 32) -> np.ndarray:
    """[N, R, k, D] embeddings of k pseudo-images per round, stored as float16. Depends on
    the image side of the encoder only."""
    drawn = draw_pseudo_images(ds, generator, k, seed, cache, chunk)

    def pseudo(a: int, b: int) -> np.ndarray:
        pixels = drawn(a, b)
        images = [Image.fromarray(p) for p in pixels.reshape(-1, *pixels.shape[-3:])]
        return encoder.encode_images(images).reshape(b - a, ds.rounds, k, -1).astype(np.float16)

    key = digest(ds.key, "chatir", encoder.image_identity, *_drawing(generator), seed, k, chunk)
    return chunked(cache / f"pseudo-{key}", len(ds.dialogs), chunk, pseudo,
                   f"pseudo-images (k={k})", ds.total)


def embed_corpus(ds: DialogSet, encoder, cache: Path) -> np.ndarray:
    """[M, D] embeddings of the corpus images (keyed by their paths and sizes)."""
    try:
        stats = [(p, (st := os.stat(ds.image_path(i))).st_size, st.st_mtime_ns)
                 for i, p in enumerate(ds.corpus)]
    except FileNotFoundError as e:
        raise DialogFileError(f"corpus image {e.filename} not found; image paths resolve "
                              "against --images ROOT (default: the dialog file's folder)"
                              ) from None
    key = digest(stats, str(ds.root.resolve()), encoder.image_identity)
    return chunked(cache / f"corpus-{key}", len(ds.corpus), 1024,
                   lambda a, b: encoder.encode_images(_load_images(ds, range(a, b))),
                   "embed corpus")


def embed_dialog_set(ds: DialogSet, encoder, generator=None, k: int = 1, seed: int = 0,
                     cache_dir: str | Path | None = None) -> DialogEmbeddings:
    """Embed (and cache) every round's query, the corpus and, with a generator, k
    pseudo-images per round. The slow part, the pseudo-images, goes first: it does not
    depend on the text side, so a run stopped then is never wasted by a text-head change."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache()
    image = (embed_pseudo_images(ds, encoder, generator, k, seed, cache)
             if generator is not None else None)
    return DialogEmbeddings(embed_queries(ds, encoder, cache), image,
                            embed_corpus(ds, encoder, cache), ds.targets)
