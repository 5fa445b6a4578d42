"""Free phrasings of a scene: how people describe a picture, not how our templates do.

Captions (world/captions.py) follow four templates; a person writes "background: brown.
objects: a big striped red star, upper left" or "is there one with a grey cross in the
middle?". This module describes a scene from its ground truth in many sentence frames,
word orders, synonyms, lists and questions, so the encoder and the generator learn to read
meaning rather than a layout.

Every choice (frame, synonym, order) comes in two disjoint sets: `train` and `heldout`.
Models train on `train` phrasings only; `heldout` ones judge whether they generalise to
wording they have never seen.
"""

from __future__ import annotations

import random

from world.captions import NUMBERS
from world.scene import Scene, SceneObject

# Each entry: value -> (train words, held-out words). The first train word is the
# template's own, so template captions stay in the training distribution.
SYNONYMS = {
    "size": {"small": (("small", "tiny", "little"), ("miniature", "wee")),
             "medium": (("medium", "medium-sized", "mid-sized"), ("average-sized",
                                                                  "moderate")),
             "large": (("large", "big", "huge"), ("giant", "enormous"))},
    "fill": {"solid": (("solid", "filled", "plain"), ("full", "uniformly coloured")),
             "striped": (("striped", "stripy", "lined"), ("banded", "with stripes")),
             "dotted": (("dotted", "spotted", "polka-dot"), ("speckled", "with dots")),
             "checkered": (("checkered", "checked", "chequered"), ("checkerboard",
                                                                   "chessboard")),
             "hollow": (("hollow", "outlined", "empty"), ("unfilled", "open"))},
    "colour": {"gray": (("gray", "grey"), ("slate grey",)),
               "purple": (("purple", "violet"), ("purplish",)),
               "cyan": (("cyan", "turquoise"), ("aqua",))},
    "shape": {"square": (("square", "box"), ("block",)),
              "cross": (("cross", "plus sign"), ("plus",)),
              "diamond": (("diamond", "rhombus"), ("lozenge",)),
              "circle": (("circle", "disc"), ("round shape",))},
}
PLACES = {  # position -> (train phrases, held-out phrases), each reads after the object
    "top left": (("in the top left", "top left", "in the upper left corner"),
                 ("upper-left", "at the top on the left")),
    "top": (("at the top", "top middle", "at the top centre"),
            ("up top", "in the upper middle")),
    "top right": (("in the top right", "top right", "in the upper right corner"),
                  ("upper-right", "at the top on the right")),
    "left": (("on the left", "left", "at the middle left"),
             ("left side", "in the left middle")),
    "center": (("in the center", "centre", "in the middle"),
               ("dead centre", "in the very middle")),
    "right": (("on the right", "right", "at the middle right"),
              ("right side", "in the right middle")),
    "bottom left": (("in the bottom left", "bottom left", "in the lower left corner"),
                    ("lower-left", "at the bottom on the left")),
    "bottom": (("at the bottom", "bottom middle", "at the bottom centre"),
               ("down below", "in the lower middle")),
    "bottom right": (("in the bottom right", "bottom right", "in the lower right corner"),
                     ("lower-right", "at the bottom on the right")),
}
STYLES = {
    "flat": (("flat", "a flat drawing"), ("clean vector art",)),
    "outline": (("outlined", "an outlined drawing"), ("line-bordered shapes",)),
    "textured": (("textured", "a textured picture"), ("grainy paper look",)),
    "noisy": (("noisy", "a noisy picture"), ("static-covered",)),
}
# Sentence frames. {objs}: the object list, {bg}: background colour word, {n}: count word.
FRAMES = (
    ("{objs} on a {bg} background",
     "a {bg} background with {objs}",
     "background: {bg}. objects: {objs}",
     "there is {objs}; the background is {bg}",
     "I'm looking for a picture with {objs} on {bg}",
     "{bg} backdrop, {objs}",
     "{n} shapes: {objs}. background {bg}",
     "can you find {objs} against {bg}?",
     "the image shows {objs} over a {bg} background",
     "{objs}; {bg} behind them"),
    ("bg = {bg}; items = {objs}",
     "on {bg} there is {objs}",
     "show me an image of {objs}, everything on {bg}",
     "it has {n} things in it: {objs}, with a {bg} background",
     "looking for {objs}. the background colour is {bg}",
     "do you have one where {objs} sit on {bg}?"),
)
LIST_JOINS = ((", ", " and ", "; ", ", plus "), (" as well as ", " | ", " along with "))
OBJECT_ORDERS = (  # attribute order of an object phrase; "place" may lead or trail
    (("size", "colour", "fill", "shape", "place"), ("colour", "size", "fill", "shape", "place"),
     ("place", "size", "colour", "fill", "shape"), ("colour", "shape", "place", "size", "fill")),
    (("fill", "colour", "size", "shape", "place"), ("size", "fill", "colour", "shape", "place"),
     ("place", "colour", "shape", "size", "fill")),
)


def _pick(rng: random.Random, options: tuple[tuple, tuple], split: str):
    """One option from the train set, or from the held-out set (falling back to train)."""
    train, held = options
    return rng.choice(held if split == "heldout" and held and rng.random() < 0.7 else train)


def _word(kind: str, value: str, rng: random.Random, split: str) -> str:
    options = SYNONYMS[kind].get(value)
    return _pick(rng, options, split) if options else value


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def object_description(obj: SceneObject, attrs: set[str], rng: random.Random,
                       split: str = "train") -> str:
    """One object in a random attribute order with synonyms; `attrs` limits what is said."""
    order = _pick(rng, OBJECT_ORDERS, split)
    words = {"size": _word("size", obj.size, rng, split),
             "colour": _word("colour", obj.colour, rng, split),
             "fill": _word("fill", obj.fill, rng, split),
             "shape": _word("shape", obj.shape, rng, split) if "shape" in attrs else "shape",
             "place": _pick(rng, PLACES[obj.position], split)}
    wanted = attrs | {"shape"} | ({"place"} if "position" in attrs else set())
    said = [k for k in order if k in wanted]
    # Multi-word modifiers ("with stripes") read after the noun; the place is handled last.
    tail = [k for k in said if k == "fill" and " " in words[k] and "uniformly" not in words[k]]
    adjectives = [words[k] for k in said if k not in ("shape", "place", *tail)]
    phrase = _article(" ".join([*adjectives, words["shape"]]))
    if tail:
        phrase += " " + words["fill"]
    if "place" in said:
        lead = order.index("place") == 0 and rng.random() < 0.5
        place = words["place"]
        phrase = f"{place}, {phrase}" if lead else f"{phrase} {place}"
    return phrase


def describe(scene: Scene, rng: random.Random, split: str = "train",
             partial: bool = False) -> str:
    """A free description of `scene`. Full by default (every object, every attribute, the
    background); `partial` leaves out objects, attributes and the background at random."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    objects = list(scene.objects)
    if rng.random() < 0.5:
        rng.shuffle(objects)  # people do not describe in reading order
    everything = {"shape", "colour", "size", "fill", "position"}
    if partial:
        keep = rng.randint(1, len(objects))
        objects = objects[:keep]
        attr_sets = [{a for a in everything if rng.random() < 0.6} | {"shape"}
                     for _ in objects]
    else:
        attr_sets = [everything] * len(objects)
    phrases = [object_description(o, a, rng, split) for o, a in zip(objects, attr_sets)]
    glue = _pick(rng, LIST_JOINS, split)
    objs = phrases[0] if len(phrases) == 1 else glue.join(phrases)
    if partial and rng.random() < 0.4:
        return objs
    frame = _pick(rng, FRAMES, split)
    bg = _word("colour", scene.background, rng, split)
    text = frame.format(objs=objs, bg=bg, n=NUMBERS[len(scene.objects)])
    if len(scene.objects) == 1:
        text = text.replace("one shapes", "one shape").replace("one things", "one thing")
    if not partial and rng.random() < 0.3:
        style = _pick(rng, STYLES[scene.style], split)
        text = f"{text}, {style}" if rng.random() < 0.5 else f"{style}: {text}"
    return text
