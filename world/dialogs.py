"""ChatIR-style dialogs answered from ground truth.

A dialog is a partial caption plus ten "question? answer" rounds. The questioner asks about
what the dialog has not revealed yet (background, how many objects, an unmentioned object,
an unknown attribute of a known one), so every round can add information, as a good
questioner would; when nothing is left it asks yes/no questions about shapes, then coloured
shapes, that are not there, never asking one twice.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

from dialog.query import chatir_query
from world.captions import NUMBERS, PLACE, STYLE_PHRASE, object_phrase, partial_caption
from world.scene import COLOURS, FILLS, POSITIONS, SHAPES, SIZES, Scene

ROUNDS = 10
QUESTION = {
    "shape": "what shape is {ref}?", "colour": "what color is {ref}?",
    "size": "how big is {ref}?", "fill": "what pattern does {ref} have?",
    "position": "where is {ref}?",
}


VALUES = {"shape": SHAPES, "colour": tuple(COLOURS), "size": SIZES, "fill": FILLS,
          "position": POSITIONS}


def _wrong(attr: str, value: str, liar: random.Random) -> str:
    """Another value of the same attribute: what a person who misremembers says."""
    return liar.choice([v for v in VALUES[attr] if v != value])


def _answer(attr: str, value: str) -> str:
    if attr == "shape":
        return f"it is a {value}"
    if attr == "position":
        return PLACE[value]
    return value


def _reference(scene: Scene, i: int, known: list[set[str]]) -> str:
    """How the dialog so far can point at object i without naming what it has not said."""
    obj = scene.objects[i]
    said = known[i] & {"colour", "shape"}
    ref = object_phrase(obj, said | ({"shape"} if not said else set())).split(" ", 1)[1]
    if "shape" not in said and "colour" not in said:
        ref = "shape"
    twins = [j for j, o in enumerate(scene.objects) if j != i and known[j]
             and all(getattr(o, a) == getattr(obj, a) for a in said)]
    if twins or not said:
        ref += " " + PLACE[obj.position]
    return "the " + ref


def make_dialog(scene: Scene, rng: random.Random | None = None, wrong: float = 0.0
                ) -> list[str]:
    """[caption, "q? a" x 10], deterministic for the scene's seed.

    `wrong`: the chance that an answer is false (another colour, shape, count, ...), the
    robustness control of a person who misremembers. Lies draw from their own random source,
    so the questions asked, and every dialog with `wrong=0`, stay as they are."""
    rng = rng or random.Random(scene.seed * 31 + 7)
    liar = random.Random(scene.seed * 97 + 13)
    caption, known, facts = partial_caption(scene, rng)
    rounds = []
    # Yes/no questions for when everything is known: absent shapes first, then coloured
    # shapes the scene lacks (an endless supply, so no question is ever repeated).
    present = {(o.colour, o.shape) for o in scene.objects}
    absent_shapes = [s for s in SHAPES if s not in {o.shape for o in scene.objects}]
    absent_pairs = [f"{c} {s}" for c in COLOURS for s in SHAPES if (c, s) not in present]
    rng.shuffle(absent_shapes)
    rng.shuffle(absent_pairs)
    absent = absent_pairs + absent_shapes  # popped from the end: shapes first
    for _ in range(ROUNDS):
        options: list[tuple[str, str, Callable[[], None]]] = []
        if "background" not in facts:
            options.append(("what color is the background?", ("colour", scene.background),
                            lambda: facts.add("background")))
        if "count" not in facts:
            options.append(("how many objects are there?", ("count", NUMBERS[len(scene.objects)]),
                            lambda: facts.add("count")))
        if "style" not in facts and rng.random() < 0.3:
            options.append(("what does the picture look like?",
                            ("style", STYLE_PHRASE[scene.style]), lambda: facts.add("style")))
        hidden = [i for i, k in enumerate(known) if not k]
        if hidden:
            i = hidden[0]
            options.append(("is there anything else?", ("object", scene.objects[i]),
                            lambda i=i: known[i].update({"shape", "colour", "position"})))
        for i, k in enumerate(known):
            if not k:
                continue
            for attr in ("shape", "colour", "size", "fill", "position"):
                if attr not in k:
                    ref = _reference(scene, i, known)
                    value = getattr(scene.objects[i], attr)
                    options.append((QUESTION[attr].format(ref=ref), (attr, value),
                                    lambda k=k, attr=attr: k.add(attr)))
        if options:
            question, (kind, truth), reveal = rng.choice(options)
            reveal()
            answer = _say(kind, truth, liar if wrong and liar.random() < wrong else None)
        else:
            question = f"is there a {absent.pop()}?"
            answer = "yes" if wrong and liar.random() < wrong else "no"
        rounds.append(f"{question} {answer}")
    return [caption, *rounds]


def _say(kind: str, truth, liar: random.Random | None) -> str:
    """The answer to a question about `kind` whose true value is `truth`; false with `liar`."""
    if kind == "object":
        obj = truth
        if liar:
            obj = replace(obj, shape=_wrong("shape", obj.shape, liar),
                          colour=_wrong("colour", obj.colour, liar))
        return "yes, " + object_phrase(obj, {"shape", "colour", "position"})
    if liar:
        options = {"colour": tuple(COLOURS), "count": NUMBERS[1:5],
                   "style": tuple(STYLE_PHRASE.values())}.get(kind)
        truth = (liar.choice([v for v in options if v != truth]) if options
                 else _wrong(kind, truth, liar))
    return _answer(kind, truth) if kind in VALUES else truth


def round_query(dialog: list[str], r: int) -> str:
    """The ChatIR round-r query: the caption and the first r answered questions."""
    return chatir_query(dialog[: r + 1])
