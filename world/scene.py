"""Scenes as structured ground truth, sampled deterministically from a seed.

A scene is a background colour, a rendering style and 1-4 objects. Every object sits in its
own cell of a 3x3 grid, so "the circle at the top left" always names one place. Splits draw
from disjoint seed ranges, so a test scene is never a training scene.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "hexagon")
COLOURS = {  # name -> RGB; one palette for objects and backgrounds
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "orange": (245, 140, 20),
    "purple": (140, 60, 190),
    "pink": (245, 140, 190),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
    "gray": (128, 128, 128),
    "brown": (130, 80, 40),
    "cyan": (40, 210, 220),
}
SIZES = ("small", "medium", "large")
FILLS = ("solid", "striped", "dotted", "checkered", "hollow")
POSITIONS = (  # row-major 3x3 grid
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
STYLE_NAMES = ("flat", "outline", "textured", "noisy")

# Disjoint seed ranges per split: 10M scenes each is far more than any run draws.
SPLITS = {"train": 0, "val": 10_000_000, "test": 20_000_000}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str
    fill: str

    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    seed: int
    background: str
    style: str
    objects: tuple[SceneObject, ...]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(d["seed"], d["background"], d["style"],
                   tuple(SceneObject(**o) for o in d["objects"]))


def split_seed(split: str, index: int) -> int:
    """The seed of scene `index` of `split`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    if not 0 <= index < 10_000_000:
        raise ValueError(f"scene index {index} out of range [0, 10M)")
    return SPLITS[split] + index


def sample_scene(seed: int, styles: tuple[str, ...] = STYLE_NAMES) -> Scene:
    """Draw one scene; the same seed always gives the same scene."""
    rng = random.Random(seed)
    background = rng.choice(list(COLOURS))
    style = rng.choice(styles)
    n = rng.choice((1, 2, 2, 3, 3, 4))  # fewer lone objects: they are the hardest to tell apart
    cells = rng.sample(POSITIONS, n)
    objects = []
    used = set()
    for cell in cells:
        # Objects differ from the background and from each other in (colour, shape), so a
        # caption naming "the red circle" is never ambiguous.
        while True:
            shape = rng.choice(SHAPES)
            colour = rng.choice([c for c in COLOURS if c != background])
            if (colour, shape) not in used:
                break
        used.add((colour, shape))
        objects.append(SceneObject(shape, colour, rng.choice(SIZES), cell, rng.choice(FILLS)))
    objects.sort(key=lambda o: POSITIONS.index(o.position))  # reading order
    return Scene(seed, background, style, tuple(objects))
