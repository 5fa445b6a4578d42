"""Pseudo-image fidelity on world dialogs, judged by the world's ground truth.

For test dialogs at rounds 0, 2, 5 and 10 the generator draws the round's query and we ask
what a user would: is the background the colour the dialog named, is each named object's
colour where the dialog put it, are empty cells left empty, and does the pseudo-image alone
find the target in a 5,000-scene gallery. The judge works on the 32x32 picture the way the
eye would: nearest palette colour, pixel by pixel. The same judge on the real render (at the
generator's size) is reported beside it as the ceiling.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from evaluation.metrics import percentiles_ms, recall_at, target_ranks
from world.captions import PLACE, full_caption
from world.dialogs import make_dialog, round_query
from world.phrasings import describe
from world.render import render
from world.scene import COLOURS, POSITIONS, Scene, sample_scene, split_seed

ROUNDS = (0, 2, 5, 10)
PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
NAMES = list(COLOURS)
BACKGROUND_CUES = ("{} background", "{} backdrop", "background? {}", "over {}", "on {},")


def palette_index(pixels: np.ndarray) -> np.ndarray:
    """Nearest palette colour of each RGB pixel [..., 3] -> [...]."""
    d = ((pixels[..., None, :].astype(np.float32) - PALETTE) ** 2).sum(-1)
    return d.argmin(-1)


def background_colour(image: np.ndarray) -> str:
    """The colour of the 2x2 corners: no object reaches a corner of its cell."""
    s = image.shape[0]
    corners = np.concatenate([image[:2, :2], image[:2, s - 2:], image[s - 2:, :2],
                              image[s - 2:, s - 2:]]).reshape(-1, 3)
    return NAMES[palette_index(np.median(corners, 0))]


def cell_centre(image: np.ndarray, position: str) -> np.ndarray:
    """The pixels of the middle third of a grid cell (every object covers its centre)."""
    s = image.shape[0]
    row, col = divmod(POSITIONS.index(position), 3)
    c = s / 3
    y0, x0 = int(row * c + c / 3), int(col * c + c / 3)
    y1, x1 = int(row * c + 2 * c / 3) + 1, int(col * c + 2 * c / 3) + 1
    return image[y0:y1, x0:x1].reshape(-1, 3)


def colour_present(image: np.ndarray, position: str, colour: str,
                   share: float = 0.1) -> bool:
    """At least `share` of the cell centre is nearest to `colour` (low: a small striped
    object covers only part of its cell's centre, in two shades)."""
    idx = palette_index(cell_centre(image, position))
    return bool((idx == NAMES.index(colour)).mean() >= share)


def named_objects(scene: Scene, query: str) -> list:
    """Objects the query names with colour, shape and place (non-hollow: a hollow object's
    centre is background)."""
    q = query.lower()
    return [o for o in scene.objects if o.fill != "hollow" and o.colour in q
            and o.shape in q and PLACE[o.position] in q]


def judge(image: Image.Image, scene: Scene, query: str) -> dict:
    """Per-image verdicts; None where the query does not name the thing judged."""
    px = np.asarray(image.convert("RGB"))
    named_bg = any(c.format(scene.background) in query.lower() for c in BACKGROUND_CUES)
    objs = named_objects(scene, query)
    occupied = {o.position for o in scene.objects}
    empty = [p for p in POSITIONS if p not in occupied]
    bg = background_colour(px)
    bg_idx = NAMES.index(scene.background)
    spurious = [float((palette_index(cell_centre(px, p)) != bg_idx).mean() > 0.5)
                for p in empty]
    return {"background": float(bg == scene.background) if named_bg else None,
            "object_colour": ([float(colour_present(px, o.position, o.colour)) for o in objs]),
            "empty_cell_clean": [1.0 - s for s in spurious]}


def _mean(values: list) -> float | None:
    flat = [v for v in values if v is not None]
    return float(np.mean(flat)) if flat else None


def bench_dialog_fidelity(encoder, generator, dialogs: int = 300, n_gallery: int = 5000,
                          grid_path=None, latency_runs: int = 40) -> dict:
    """Fidelity per round on `dialogs` test dialogs whose targets are among `n_gallery`
    test scenes; image-only Hits@K (at that round, not cumulative) against that gallery."""
    from evaluation.bench import embed_gallery, test_scenes

    scenes = test_scenes(n_gallery)
    gallery = embed_gallery(encoder, scenes)
    size = generator.size
    result = {"dialogs": dialogs, "gallery": n_gallery, "generator": generator.identity,
              "steps": generator.steps, "guidance": generator.guidance, "rounds": {}}
    dialog_texts = [make_dialog(s) for s in scenes[:dialogs]]
    targets = np.arange(dialogs)
    grid_images = {}
    for r in ROUNDS:
        queries = [round_query(d, r) for d in dialog_texts]
        images = []
        for i in tqdm(range(0, dialogs, 50), desc=f"round {r}", unit="batch"):
            images += generator.generate(queries[i:i + 50], seed=0)
        ranks = target_ranks(encoder.encode_images(images) @ gallery.T, targets)
        t_ranks = target_ranks(encoder.encode_texts(queries) @ gallery.T, targets)
        verdicts = [judge(im, s, q) for im, s, q in zip(images, scenes, queries)]
        real = [judge(render(s, size), s, q) for s, q in zip(scenes, queries)]
        result["rounds"][str(r)] = {
            **{f"image_hits@{k}": float((ranks < k).mean() * 100) for k in (1, 5, 10)},
            "text_hits@10": float((t_ranks < 10).mean() * 100),
            "background_right": _mean([v["background"] for v in verdicts]),
            "background_named": sum(v["background"] is not None for v in verdicts),
            "object_colour_right": _mean(sum((v["object_colour"] for v in verdicts), [])),
            "objects_named": sum(len(v["object_colour"]) for v in verdicts),
            "empty_cells_clean": _mean(sum((v["empty_cell_clean"] for v in verdicts), [])),
            "ceiling_object_colour_right": _mean(sum((v["object_colour"] for v in real), [])),
            "ceiling_empty_cells_clean": _mean(sum((v["empty_cell_clean"] for v in real), [])),
        }
        grid_images[r] = images[:8]
    # One pseudo-image as the app makes it: generate and embed, batch 1, fresh prompts.
    single = []
    for i in range(latency_runs):
        query = round_query(make_dialog(sample_scene(split_seed("val", i))), 10)
        t0 = time.perf_counter()
        encoder.encode_images(generator.generate([query], seed=0))
        single.append(time.perf_counter() - t0)
    result["latency_generate_and_embed"] = percentiles_ms(single[5:])
    if grid_path is not None:
        dialog_grid(scenes[:8], grid_images).save(grid_path)
        grid_path = Path(grid_path)
        result["grid"] = grid_path.name
    return result


WORDINGS = ("full caption", "training wording", "held-out wording")


def described(scene: Scene, form: str) -> str:
    """A full description of `scene` in one of WORDINGS: the caption template, a free
    description in the forms training uses, or one in forms no training ever sees."""
    if form == "full caption":
        return full_caption(scene)
    split = "heldout" if form == "held-out wording" else "train"
    return describe(scene, random.Random(scene.seed), split)


def bench_wording(encoder, generator, n: int = 500, n_gallery: int = 5000,
                  gallery: np.ndarray | None = None) -> dict:
    """Does the pseudo-image depend on how a person words the scene? For the first `n` test
    scenes, each described fully in each of WORDINGS: image-only R@1/R@10 of the pseudo-image
    against `n_gallery` test scenes, and whether it has the background the text named."""
    from evaluation.bench import embed_gallery, test_scenes

    if n > n_gallery:
        raise ValueError(f"the {n} described scenes must be in the gallery of {n_gallery}")
    scenes = test_scenes(n_gallery)
    gallery = embed_gallery(encoder, scenes) if gallery is None else gallery
    targets = np.arange(n)
    out = {"scenes": n, "gallery": n_gallery, "generator": generator.identity}
    for form in WORDINGS:
        queries = [described(s, form) for s in scenes[:n]]
        images = []
        for i in tqdm(range(0, n, 50), desc=form, unit="batch"):
            images += generator.generate(queries[i:i + 50], seed=0)
        ranks = target_ranks(encoder.encode_images(images) @ gallery.T, targets)
        background = [background_colour(np.asarray(im.convert("RGB"))) == s.background
                      for im, s in zip(images, scenes[:n])]
        out[form] = {**recall_at(ranks), "background_right": float(np.mean(background)),
                     "example": queries[0]}
    return out


def dialog_grid(scenes: list[Scene], images: dict[int, list[Image.Image]]) -> Image.Image:
    """One row per dialog: the real target, then the pseudo-image at each round."""
    tile, pad = 80, 16
    grid = Image.new("RGB", ((len(ROUNDS) + 1) * tile, pad + len(scenes) * tile), "white")
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(["target", *(f"round {r}" for r in ROUNDS)]):
        draw.text((c * tile + 4, 2), label, fill="black")
    for i, scene in enumerate(scenes):
        grid.paste(render(scene, tile), (0, pad + i * tile))
        for c, r in enumerate(ROUNDS, start=1):
            grid.paste(images[r][i].resize((tile, tile), Image.NEAREST),
                       (c * tile, pad + i * tile))
    return grid


