"""ChatIR-style dialogs answered from ground truth.

A dialog is a partial caption plus ten "question? answer" rounds. The questioner asks about
what the dialog has not revealed yet (background, how many objects, an unmentioned object,
an unknown attribute of a known one), so every round can add information, as a good
questioner would; when nothing is left it asks about shapes that are not there.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from dialog.query import chatir_query
from world.captions import NUMBERS, PLACE, STYLE_PHRASE, object_phrase, partial_caption
from world.scene import SHAPES, Scene

ROUNDS = 10
QUESTION = {
    "shape": "what shape is {ref}?", "colour": "what color is {ref}?",
    "size": "how big is {ref}?", "fill": "what pattern does {ref} have?",
    "position": "where is {ref}?",
}


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


def make_dialog(scene: Scene, rng: random.Random | None = None) -> list[str]:
    """[caption, "q? a" x 10], deterministic for the scene's seed."""
    rng = rng or random.Random(scene.seed * 31 + 7)
    caption, known, facts = partial_caption(scene, rng)
    rounds = []
    absent = [s for s in SHAPES if s not in {o.shape for o in scene.objects}]
    rng.shuffle(absent)
    for _ in range(ROUNDS):
        options: list[tuple[str, str, Callable[[], None]]] = []
        if "background" not in facts:
            options.append(("what color is the background?", scene.background,
                            lambda: facts.add("background")))
        if "count" not in facts:
            options.append(("how many objects are there?", NUMBERS[len(scene.objects)],
                            lambda: facts.add("count")))
        if "style" not in facts and rng.random() < 0.3:
            options.append(("what does the picture look like?", STYLE_PHRASE[scene.style],
                            lambda: facts.add("style")))
        hidden = [i for i, k in enumerate(known) if not k]
        if hidden:
            i = hidden[0]
            options.append(("is there anything else?",
                            "yes, " + object_phrase(scene.objects[i], {"shape", "colour",
                                                                       "position"}),
                            lambda i=i: known[i].update({"shape", "colour", "position"})))
        for i, k in enumerate(known):
            if not k:
                continue
            for attr in ("shape", "colour", "size", "fill", "position"):
                if attr not in k:
                    ref = _reference(scene, i, known)
                    value = getattr(scene.objects[i], attr)
                    options.append((QUESTION[attr].format(ref=ref), _answer(attr, value),
                                    lambda k=k, attr=attr: k.add(attr)))
        if options:
            question, answer, reveal = rng.choice(options)
            reveal()
        else:
            shape = absent.pop() if absent else rng.choice(SHAPES[:3])
            question = f"is there a {shape}?"
            answer = "yes" if any(o.shape == shape for o in scene.objects) else "no"
        rounds.append(f"{question} {answer}")
    return [caption, *rounds]


def round_query(dialog: list[str], r: int) -> str:
    """The ChatIR round-r query: the caption and the first r answered questions."""
    return chatir_query(dialog[: r + 1])
