"""Image domains for continual learning: the same scenes, drawn in clearly different looks.

The four rendering styles of `world.render` are domains, and so are three looks no shipped
model has seen (pencil sketch, pixelated, halftone print) and one kept out of every training
run (blurred), to test what routing does with a kind of image it has no adapter for.

Every domain draws its scenes from its own seed range of each split, so no scene is shared
between domains or between train, val and test. Texts never name the domain: a person
searching does not say "in the pixelated style", and routing must work without being told.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from world.captions import ALL, FULL_TEMPLATES, NUMBERS, join, object_phrase
from world.render import CANVAS, _edge, _pattern, _shape_mask, render
from world.scene import COLOURS, STYLE_NAMES, Scene, sample_scene, split_seed

NEW_STYLES = ("sketch", "pixelated", "halftone", "blurred")
DOMAINS = STYLE_NAMES + NEW_STYLES
# The benchmark: a base encoder trained on `BASE` only, then the others one by one; `HELD_OUT`
# is never trained on (out of distribution).
BASE = "flat"
ARRIVALS = ("outline", "textured", "noisy", "sketch", "pixelated", "halftone")
HELD_OUT = "blurred"
SEEDS_PER_DOMAIN = 1_000_000  # each domain owns indices [k * this, (k + 1) * this) of a split


def domain_seed(domain: str, split: str, index: int) -> int:
    """The seed of scene `index` of `domain` in `split`; disjoint across domains and splits."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    if not 0 <= index < SEEDS_PER_DOMAIN:
        raise ValueError(f"scene index {index} out of range [0, {SEEDS_PER_DOMAIN})")
    return split_seed(split, DOMAINS.index(domain) * SEEDS_PER_DOMAIN + index)


def domain_scene(domain: str, split: str, index: int) -> Scene:
    # The scene is sampled as usual and then given the domain's look, so the content
    # distribution is the same in every domain; only how it is drawn differs.
    return replace(sample_scene(domain_seed(domain, split, index)), style=domain)


def render_domain(scene: Scene, size: int = CANVAS) -> Image.Image:
    """Draw `scene` in its domain (`scene.style`, any of `DOMAINS`)."""
    style = scene.style
    if style in STYLE_NAMES:
        return render(scene, size)
    if style == "sketch":
        out = _sketch(scene)
    else:
        flat = render(replace(scene, style="flat"))
        if style == "pixelated":  # 12x12 blocks of averaged colour
            out = flat.resize((12, 12), Image.BOX).resize((CANVAS, CANVAS), Image.NEAREST)
        elif style == "halftone":
            out = _halftone(flat)
        elif style == "blurred":
            out = flat.filter(ImageFilter.GaussianBlur(4))
        else:
            raise ValueError(f"unknown domain {style!r}; expected one of {', '.join(DOMAINS)}")
    return out if size == CANVAS else out.resize((size, size), Image.BOX)


def _sketch(scene: Scene) -> Image.Image:
    """Coloured pencil on paper: a pale wash of the background, outlines, light hatching."""
    rng = random.Random(scene.seed * 7919 + 1)  # the same jitter as `render`
    paper = np.asarray(COLOURS[scene.background], np.float32) * 0.35 + 255 * 0.65
    img = np.empty((CANVAS, CANVAS, 3), np.float32)
    img[:] = paper
    y, x = np.mgrid[0:CANVAS, 0:CANVAS]
    hatch = (x - y) % 7 == 0
    for obj in scene.objects:
        mask = _shape_mask(obj, rng)
        ink = np.asarray(COLOURS[obj.colour], np.float32)
        inside = mask & (hatch | ~_pattern(obj.fill, mask.shape)) if obj.fill != "hollow" \
            else np.zeros_like(mask)
        img[inside] = 0.5 * img[inside] + 0.5 * ink
        img[_edge(mask, 2)] = ink
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _halftone(flat: Image.Image) -> Image.Image:
    """Print dots: each 4x4 cell shows its colour as a dot on white paper."""
    cells = np.asarray(flat.resize((CANVAS // 4, CANVAS // 4), Image.BOX), np.float32)
    colour = np.repeat(np.repeat(cells, 4, 0), 4, 1)
    y, x = np.mgrid[0:CANVAS, 0:CANVAS]
    dot = ((x % 4) - 1.5) ** 2 + ((y % 4) - 1.5) ** 2 <= 2.6
    img = np.where(dot[..., None], colour, 250.0)
    return Image.fromarray(img.astype(np.uint8), "RGB")


def domain_caption(scene: Scene, rng: random.Random, partial: bool = False) -> str:
    """A caption that names the background and objects but never the look of the picture."""
    objs = list(scene.objects)
    attrs = [ALL] * len(objs)
    if partial:  # some objects, some of their attributes: a person's first description
        objs = rng.sample(objs, rng.randint(1, len(objs)))
        objs.sort(key=scene.objects.index)
        attrs = [{"shape"} | {a for a in ("colour", "size", "fill", "position")
                              if rng.random() < 0.6} for _ in objs]
    text = join([object_phrase(o, a) for o, a in zip(objs, attrs)])
    if partial:
        return text + (f" on a {scene.background} background" if rng.random() < 0.6 else "")
    template = rng.choice(FULL_TEMPLATES if len(objs) > 1 else FULL_TEMPLATES[:2])
    # The templates' style slot becomes a neutral word, so texts carry no domain.
    return template.format(style="a picture", objs=text, bg=scene.background,
                           n=NUMBERS[len(objs)])


def write_domain(domain: str, split: str, n: int, out: str | Path, first: int = 0,
                 size: int = CANVAS) -> Path:
    """Render scenes `first`.. of `domain` into `out`/images with `out`/captions.json
    ({file: [full caption, partial caption]}): the input `itir domain add` takes."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    captions = {}
    for i in tqdm(range(first, first + n), desc=f"{domain} {split}", unit="scene"):
        scene = domain_scene(domain, split, i)
        name = f"images/{domain}-{split}-{i:06d}.png"
        render_domain(scene, size).save(out / name)
        rng = random.Random(scene.seed * 31)
        captions[name] = [domain_caption(scene, rng), domain_caption(scene, rng, partial=True)]
    (out / "captions.json").write_text(json.dumps(captions, indent=1))
    return out
