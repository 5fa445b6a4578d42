"""Draw a scene as an RGB image.

Everything is drawn at 128x128 (enough for fill patterns to survive) and resized when a
smaller image is asked for. The style is the scene's domain: the same objects look different
under each style, which is what continual-learning experiments need.
"""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from world.scene import COLOURS, POSITIONS, Scene, SceneObject

CANVAS = 128
CELL = CANVAS / 3
RADIUS = {"small": 0.2, "medium": 0.3, "large": 0.42}  # fraction of a cell
STYLES = ("flat", "outline", "textured", "noisy")
# Bumped whenever a scene's pixels change, so caches of rendered images are rebuilt.
# 2: outline scenes get their dark edges (before, Pillow 12's flood fill left them flat).
RENDER_VERSION = 2


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    def ring(n: int, radius: float, phase: float) -> list[tuple[float, float]]:
        return [(cx + radius * math.cos(phase + 2 * math.pi * k / n),
                 cy + radius * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]

    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return ring(3, r, -math.pi / 2)
    if shape == "diamond":
        return ring(4, r, -math.pi / 2)
    if shape == "hexagon":
        return ring(6, r, 0.0)
    if shape == "star":
        outer, inner = ring(5, r, -math.pi / 2), ring(5, r * 0.45, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "cross":
        a, b = r, r * 0.38
        return [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b),
                (cx + a, cy + b), (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a),
                (cx - b, cy + b), (cx - a, cy + b), (cx - a, cy - b), (cx - b, cy - b)]
    raise ValueError(f"unknown shape {shape!r}")


def _shape_mask(obj: SceneObject, rng: random.Random) -> np.ndarray:
    row, col = divmod(POSITIONS.index(obj.position), 3)
    r = RADIUS[obj.size] * CELL
    slack = max(0.0, CELL / 2 - r - 2)  # jitter inside the cell, never across its border
    cx = (col + 0.5) * CELL + rng.uniform(-slack, slack) * 0.5
    cy = (row + 0.5) * CELL + rng.uniform(-slack, slack) * 0.5
    img = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(img)
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(_polygon(obj.shape, cx, cy, r), fill=255)
    return np.asarray(img) > 127


def _edge(mask: np.ndarray, width: int) -> np.ndarray:
    shrunk = ImageFilter.MinFilter(2 * width + 1)
    inner = Image.fromarray(mask.astype(np.uint8) * 255).filter(shrunk)
    return mask & ~(np.asarray(inner) > 127)


def _pattern(fill: str, shape: tuple[int, int]) -> np.ndarray:
    """Where the object's own colour shows; elsewhere a contrasting shade of it."""
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    if fill == "striped":
        return ((x + y) // 4) % 2 == 0
    if fill == "dotted":
        return ((x % 6) - 2.5) ** 2 + ((y % 6) - 2.5) ** 2 > 4.0
    if fill == "checkered":
        return ((x // 5) + (y // 5)) % 2 == 0
    return np.ones(shape, dtype=bool)


def _shade(rgb: tuple[int, int, int]) -> np.ndarray:
    c = np.asarray(rgb, dtype=np.float32)
    # Dark colours get a light second shade, light ones a dark one, so patterns stay visible.
    return c * 0.4 if c.mean() > 90 else c + (255 - c) * 0.6


def render(scene: Scene, size: int = CANVAS) -> Image.Image:
    """Render `scene` as a `size` x `size` RGB image. Deterministic."""
    rng = random.Random(scene.seed * 7919 + 1)
    img = np.empty((CANVAS, CANVAS, 3), dtype=np.float32)
    img[:] = COLOURS[scene.background]
    if scene.style == "textured":  # woven background grain
        y, x = np.mgrid[0:CANVAS, 0:CANVAS]
        phase = rng.uniform(0, 2 * math.pi)
        grain = 0.92 + 0.08 * np.sin(x * 0.45 + phase) * np.sin(y * 0.3 - phase)
        img *= grain[..., None]
    for obj in scene.objects:
        mask = silhouette = _shape_mask(obj, rng)
        colour = np.asarray(COLOURS[obj.colour], dtype=np.float32)
        if obj.fill == "hollow":
            mask = _edge(mask, 3)
            layer = np.broadcast_to(colour, img.shape).copy()
        else:
            on = _pattern(obj.fill, mask.shape)
            layer = np.where(on[..., None], colour, _shade(COLOURS[obj.colour]))
        if scene.style == "textured":  # soft light from the top left
            y, x = np.mgrid[0:CANVAS, 0:CANVAS]
            layer = layer * (1.1 - 0.25 * (x + y) / (2 * CANVAS))[..., None]
        img[mask] = layer[mask]
        if scene.style == "outline":
            ink = (235.0, 235.0, 235.0) if obj.colour == "black" else (20.0, 20.0, 20.0)
            img[_edge(silhouette, 2)] = ink  # around the whole shape, hollow or not
    if scene.style == "noisy":
        noise = np.random.default_rng(scene.seed).normal(0, 28, img.shape)
        img += noise
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    return out if size == CANVAS else out.resize((size, size), Image.BOX)

