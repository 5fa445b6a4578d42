"""Captions from ground truth: full ones name everything, partial ones only some of it.

Several templates, so the text tower has to read the words rather than memorise one layout.
"""

from __future__ import annotations

import random

from world.scene import Scene, SceneObject

NUMBERS = ("zero", "one", "two", "three", "four")
PLACE = {  # how a position reads after an object
    "top left": "in the top left", "top": "at the top", "top right": "in the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left", "bottom": "at the bottom",
    "bottom right": "in the bottom right",
}
STYLE_PHRASE = {
    "flat": "a flat drawing", "outline": "an outlined drawing",
    "textured": "a textured picture", "noisy": "a noisy picture",
}


def object_phrase(obj: SceneObject, attrs: set[str]) -> str:
    """'a large red striped circle in the top left', keeping only `attrs` (shape always)."""
    words = [w for a, w in (("size", obj.size), ("colour", obj.colour), ("fill", obj.fill))
             if a in attrs]
    noun = obj.shape if "shape" in attrs else ("object" if words else "shape")
    first = (words or [noun])[0]
    phrase = ("an " if first[0] in "aeiou" else "a ") + " ".join([*words, noun])
    if "position" in attrs:
        phrase += " " + PLACE[obj.position]
    return phrase


def join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


ALL = {"shape", "colour", "size", "fill", "position"}
FULL_TEMPLATES = (
    "{style} of {objs} on a {bg} background",
    "{style} with a {bg} background and {objs}",
    "{n} objects on {bg}, {style}: {objs}",
    "{objs}, all on a {bg} background, {style}",
)


def full_caption(scene: Scene, rng: random.Random | None = None) -> str:
    """Names the style, the background and every attribute of every object."""
    rng = rng or random.Random(scene.seed)
    n = len(scene.objects)
    template = rng.choice(FULL_TEMPLATES if n > 1 else (FULL_TEMPLATES[0], FULL_TEMPLATES[1]))
    objs = join([object_phrase(o, ALL) for o in scene.objects])
    return template.format(style=STYLE_PHRASE[scene.style], objs=objs, bg=scene.background,
                           n=NUMBERS[n])


def partial_caption(scene: Scene, rng: random.Random) -> tuple[str, list[set[str]], set[str]]:
    """A caption of part of the scene, like a person's first message.

    Returns the caption, the attributes it revealed per object (empty set = not mentioned)
    and the scene-level facts it revealed ("background", "style").
    """
    k = rng.randint(1, len(scene.objects))
    chosen = set(rng.sample(range(len(scene.objects)), k))
    known: list[set[str]] = []
    parts = []
    for i, obj in enumerate(scene.objects):
        if i not in chosen:
            known.append(set())
            continue
        attrs = {a for a, p in (("shape", 0.8), ("colour", 0.75), ("size", 0.3),
                                ("fill", 0.3), ("position", 0.35)) if rng.random() < p}
        attrs = attrs or {"shape"}
        known.append(attrs)
        parts.append(object_phrase(obj, attrs))
    facts = set()
    text = join(parts)
    if rng.random() < 0.5:
        facts.add("background")
        text += rng.choice((" on a {} background", " over {}", " against a {} backdrop")).format(
            scene.background)
    if rng.random() < 0.15:
        facts.add("style")
        text = f"{STYLE_PHRASE[scene.style]} of {text}"
    return text, known, facts
