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
from typing import TYPE_CHECKING, Any

from world.captions import NUMBERS
from world.scene import Scene, SceneObject

if TYPE_CHECKING:
    from world.varied import Extra

# Each entry: value -> (train words, held-out words). The first train word is the
# template's own, so template captions stay in the training distribution. The train sets are
# broad on purpose: a head that has seen many ways to say "large" learns where "large" lives
# in the text tower's space instead of memorising three tokens, and that is what lets it read
# a word it has never seen (the held-out sets measure exactly that).
SYNONYMS = {
    "size": {"small": (("small", "tiny", "little", "mini", "teeny", "petite", "smallish",
                        "minute", "compact"), ("miniature", "wee")),
             "medium": (("medium", "medium-sized", "mid-sized", "midsize", "middling",
                         "regular-sized", "normal-sized", "intermediate", "mid-size"),
                        ("average-sized", "moderate")),
             "large": (("large", "big", "huge", "massive", "oversized", "gigantic", "biggish",
                        "sizeable", "immense", "jumbo", "vast"), ("giant", "enormous"))},
    "fill": {"solid": (("solid", "filled", "plain", "filled-in", "opaque", "monochrome",
                        "solid-colour"), ("full", "uniformly coloured")),
             "striped": (("striped", "stripy", "lined", "streaked", "pinstriped", "barred",
                          "with lines"), ("banded", "with stripes")),
             "dotted": (("dotted", "spotted", "polka-dot", "spotty", "dotty", "stippled",
                         "freckled", "with spots"), ("speckled", "with dots")),
             "checkered": (("checkered", "checked", "chequered", "gingham", "check-patterned",
                            "grid-patterned", "tiled"), ("checkerboard", "chessboard")),
             "hollow": (("hollow", "outlined", "empty", "outline-only", "see-through",
                         "unshaded", "transparent", "not filled", "line-drawn"),
                        ("unfilled", "open"))},
    "colour": {"red": (("red", "crimson", "scarlet", "ruby", "cherry", "reddish"), ()),
               "green": (("green", "emerald", "lime", "leafy green", "greenish"), ()),
               "blue": (("blue", "navy", "azure", "cobalt", "royal blue", "bluish"), ()),
               "yellow": (("yellow", "lemon", "golden", "canary", "yellowish"), ()),
               "orange": (("orange", "tangerine", "amber", "apricot", "orangey"), ()),
               "purple": (("purple", "violet", "lavender", "plum", "mauve"), ("purplish",)),
               "pink": (("pink", "rose", "rosy", "salmon", "pinkish"), ()),
               "white": (("white", "snow white", "ivory", "off-white", "whitish"), ()),
               "black": (("black", "jet black", "ebony", "pitch black", "blackish"), ()),
               "gray": (("gray", "grey", "silver", "ash grey", "greyish", "charcoal"),
                        ("slate grey",)),
               "brown": (("brown", "chocolate", "tan", "coffee", "chestnut", "brownish"), ()),
               "cyan": (("cyan", "turquoise", "teal", "sky blue", "cyan-ish"), ("aqua",))},
    "shape": {"circle": (("circle", "disc", "disk", "ball", "orb"), ("round shape",)),
              "square": (("square", "box", "cube", "squarish shape"), ("block",)),
              "triangle": (("triangle", "pyramid", "three-sided shape", "wedge"), ()),
              "diamond": (("diamond", "rhombus", "rhomb", "kite"), ("lozenge",)),
              "star": (("star", "five-pointed star", "starburst"), ()),
              "cross": (("cross", "cross shape", "cross sign"), ("plus sign",)),
              "hexagon": (("hexagon", "six-sided shape", "hex", "honeycomb cell"), ())},
}
PLACES = {  # position -> (train phrases, held-out phrases), each reads after the object
    "top left": (("in the top left", "top left", "in the upper left corner", "top-left",
                  "at the upper left", "in the top left corner", "in the northwest corner"),
                 ("upper-left", "at the top on the left")),
    "top": (("at the top", "top middle", "at the top centre", "along the top", "top-centre",
             "at the upper centre", "near the top edge"),
            ("up top", "in the upper middle")),
    "top right": (("in the top right", "top right", "in the upper right corner", "top-right",
                   "at the upper right", "in the top right corner", "in the northeast corner"),
                  ("upper-right", "at the top on the right")),
    "left": (("on the left", "left", "at the middle left", "on the left-hand side",
              "at the left edge", "centre left", "far left"),
             ("left side", "in the left middle")),
    "center": (("in the center", "centre", "in the middle", "central", "at the centre",
                "smack in the middle", "in the middle of the picture"),
               ("dead centre", "in the very middle")),
    "right": (("on the right", "right", "at the middle right", "on the right-hand side",
               "at the right edge", "centre right", "far right"),
              ("right side", "in the right middle")),
    "bottom left": (("in the bottom left", "bottom left", "in the lower left corner",
                     "bottom-left", "at the lower left", "in the bottom left corner",
                     "in the southwest corner"),
                    ("lower-left", "at the bottom on the left")),
    "bottom": (("at the bottom", "bottom middle", "at the bottom centre", "along the bottom",
                "bottom-centre", "at the lower centre", "near the bottom edge"),
               ("down below", "in the lower middle")),
    "bottom right": (("in the bottom right", "bottom right", "in the lower right corner",
                      "bottom-right", "at the lower right", "in the bottom right corner",
                      "in the southeast corner"),
                     ("lower-right", "at the bottom on the right")),
}
STYLES = {
    "flat": (("flat", "a flat drawing", "flat colours", "simple flat graphic"),
             ("clean vector art",)),
    "outline": (("outlined", "an outlined drawing", "shapes with dark edges",
                 "drawn with outlines"), ("line-bordered shapes",)),
    "textured": (("textured", "a textured picture", "rough texture", "canvas-like texture"),
                 ("grainy paper look",)),
    "noisy": (("noisy", "a noisy picture", "very noisy", "snowy with noise"),
              ("static-covered",)),
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
     "{objs}; {bg} behind them",
     "{objs}, all on {bg}",
     "I remember {objs} and a {bg} background",
     "find the one with {objs} ({bg} background)",
     "{bg} bg with {objs}",
     "it had {objs}. the background was {bg}",
     "objects: {objs}. background colour: {bg}",
     "what I want: {objs} on {bg}",
     "there were {n} shapes ({objs}) and the background was {bg}",
     "a {bg} picture containing {objs}",
     "is there an image with {objs} on a {bg} background?"),
    ("bg = {bg}; items = {objs}",
     "on {bg} there is {objs}",
     "show me an image of {objs}, everything on {bg}",
     "it has {n} things in it: {objs}, with a {bg} background",
     "looking for {objs}. the background colour is {bg}",
     "do you have one where {objs} sit on {bg}?"),
)
LIST_JOINS = ((", ", " and ", "; ", ", together with ", " & ", ", also ", " + ", ", then "),
              (" as well as ", " | ", " along with "))
OBJECT_ORDERS = (  # attribute order of an object phrase; "place" may lead or trail
    (("size", "colour", "fill", "shape", "place"), ("colour", "size", "fill", "shape", "place"),
     ("place", "size", "colour", "fill", "shape"), ("colour", "shape", "place", "size", "fill"),
     ("colour", "fill", "size", "shape", "place"), ("place", "fill", "colour", "size", "shape"),
     ("shape", "place", "colour", "size", "fill")),
    (("fill", "colour", "size", "shape", "place"), ("size", "fill", "colour", "shape", "place"),
     ("place", "colour", "shape", "size", "fill")),
)


# The kinds of choice a description makes; `describe(..., "heldout", parts=...)` draws only
# these from the held-out sets, which shows what unseen wording costs, kind by kind.
PARTS = ("words", "places", "styles", "frames", "joins", "orders")


def _pick(rng: random.Random, options: tuple[tuple, tuple], held_out: bool,
          more: tuple = ()) -> Any:
    """One option from the train set (with `more` training forms), or from the held-out set
    (falling back to train)."""
    train, held = options
    return rng.choice(held if held_out and held and rng.random() < 0.7 else train + more)


def _word(kind: str, value: str, rng: random.Random, held_out: bool,
          extra: Extra | None = None) -> str:
    if extra is not None and extra.unknown_rate and rng.random() < extra.unknown_rate:
        return rng.choice(extra.unknown_words)
    options = SYNONYMS[kind].get(value)
    more = extra.words.get(kind, {}).get(value, ()) if extra is not None else ()
    return _pick(rng, options, held_out, more) if options else value


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def object_description(obj: SceneObject, attrs: set[str], rng: random.Random,
                       held: frozenset[str] = frozenset(), extra: Extra | None = None) -> str:
    """One object in a random attribute order with synonyms; `attrs` limits what is said;
    `held` names the kinds of choice (PARTS) drawn from the held-out sets; `extra` adds
    training forms (world/varied.py)."""
    order = _pick(rng, OBJECT_ORDERS, "orders" in held)
    word = "words" in held
    words = {"size": _word("size", obj.size, rng, word, extra),
             "colour": _word("colour", obj.colour, rng, word, extra),
             "fill": _word("fill", obj.fill, rng, word, extra),
             "shape": (_word("shape", obj.shape, rng, word, extra) if "shape" in attrs
                       else "shape"),
             "place": _pick(rng, PLACES[obj.position], "places" in held,
                            extra.places[obj.position] if extra else ())}
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
             partial: bool = False, parts: tuple[str, ...] = PARTS,
             extra: Extra | None = None) -> str:
    """A free description of `scene`. Full by default (every object, every attribute, the
    background); `partial` leaves out objects, attributes and the background at random.
    With `split="heldout"`, the kinds of choice in `parts` (all by default) come from the
    held-out sets that training never sees. `extra` (world/varied.py, training only) widens
    the training forms and mixes in unknown words."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    if extra is not None and split != "train":
        raise ValueError("extra training forms are for training descriptions only")
    if unknown := set(parts) - set(PARTS):
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    held = frozenset(parts) if split == "heldout" else frozenset()
    objects = list(scene.objects)
    if rng.random() < 0.5:
        rng.shuffle(objects)  # people do not describe in reading order
    everything = ("shape", "colour", "size", "fill", "position")  # a tuple: a set's order
    # changes from process to process (string hashing), and with it what rng draws for which
    if partial:
        keep = rng.randint(1, len(objects))
        objects = objects[:keep]
        attr_sets = [{a for a in everything if rng.random() < 0.6} | {"shape"}
                     for _ in objects]
    else:
        attr_sets = [set(everything)] * len(objects)
    phrases = [object_description(o, a, rng, held, extra) for o, a in zip(objects, attr_sets)]
    glue = _pick(rng, LIST_JOINS, "joins" in held, extra.joins if extra else ())
    objs = phrases[0] if len(phrases) == 1 else glue.join(phrases)
    if partial and rng.random() < 0.4:
        return objs
    frame = _pick(rng, FRAMES, "frames" in held, extra.frames if extra else ())
    bg = _word("colour", scene.background, rng, "words" in held, extra)
    text = frame.format(objs=objs, bg=bg, n=NUMBERS[len(scene.objects)])
    if len(scene.objects) == 1:
        text = (text.replace("one shapes", "one shape").replace("one things", "one thing")
                .replace("one objects", "one object"))
    if not partial and rng.random() < 0.3:
        style = _pick(rng, STYLES[scene.style], "styles" in held)
        text = f"{text}, {style}" if rng.random() < 0.5 else f"{style}: {text}"
    return text
