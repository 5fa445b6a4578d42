"""Simulated users: the whole interactive loop (questioner, feedback, fusion) end to end.

A scripted user has a world test scene in mind. It opens with a partial caption, then each
round answers the system's own question from the ground truth (typing the true answer when
it is not among the buttons). With feedback on, it also marks the shown result most like its
target (by the encoder's image embeddings, as a person would judge by eye) "more like this"
and the least like it "not this". It says "this is it" as soon as the target is on screen,
after a message or a click.
It drives `SearchSession`, the same object the UI drives; only the clicks are scripted.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from evaluation.metrics import bri, cumulative_hits
from world.captions import ALL, NUMBERS, PLACE, STYLE_PHRASE, object_phrase, partial_caption
from world.scene import Scene

ROUNDS = 10


def main_object(scene: Scene):
    """What "the main object" means to the simulated user: the largest, first on ties."""
    order = {"large": 0, "medium": 1, "small": 2}
    return min(scene.objects, key=lambda o: order[o.size])


def true_answer(question_id: str, scene: Scene) -> str | None:
    """The ground-truth answer to a world bank question (None: a question it cannot read)."""
    obj = main_object(scene)
    return {"background": scene.background, "count": NUMBERS[len(scene.objects)],
            "shape": obj.shape, "colour": obj.colour, "size": obj.size, "fill": obj.fill,
            "position": PLACE[obj.position], "style": STYLE_PHRASE[scene.style]
            }.get(question_id)


def full_rank(gallery: np.ndarray, result, target_id: int, hidden: Sequence[int] = ()) -> int:
    """The target's 0-based rank in the whole `gallery` [M, D] under the turn's query, not
    counting the `hidden` images: those marked "not this", which the session never shows
    again, so they do not stand between the target and the screen."""
    scores = gallery @ result.query_vector[0]
    above = scores > scores[target_id]
    above[list(hidden)] = False
    return int(above.sum())


def one_session(engine, scene: Scene, target: str, ids: dict[str, int], vectors: np.ndarray,
                feedback: bool, rounds: int, rng: random.Random) -> tuple[np.ndarray, int | None]:
    """One simulated user looking for `target`: the target's rank at each round (the best of
    what that round's turn and clicks put on screen) and the round it was found at (None)."""
    target_id = ids[target]
    ranks = np.full(rounds + 1, len(vectors), np.int64)
    session = engine.session()

    def look(r: int, result) -> bool:
        """Whatever a turn or click put on screen: the target's rank under it, and "this is
        it" when the target is shown."""
        hidden = [ids[p] for p in session.state.marked("less")]
        ranks[r] = min(ranks[r], full_rank(vectors, result, target_id, hidden))
        if all(h.path != target for h in result.hits):
            return False
        session.click(target, "found")
        return True

    def pick(result, which) -> str:
        """The shown picture most (np.argmax) or least (np.argmin) like the target, by the
        encoder's image embeddings, as a person would judge by eye."""
        likeness = vectors[[h.id for h in result.hits]] @ vectors[target_id]
        return result.hits[int(which(likeness))].path

    result = session.send(partial_caption(scene, rng)[0])
    found = None
    for r in range(rounds + 1):
        seen = look(r, result)
        if not seen and r < rounds and feedback and len(result.hits) > 1:
            # Each click picks from the screen in front of the user: "not this" searches again,
            # so the picture most like the target is chosen from what that search shows.
            result = session.click(pick(result, np.argmin), "less")
            seen = look(r, result)
            if not seen:
                result = session.click(pick(result, np.argmax), "more")
                seen = look(r, result)
        if seen:  # the person has left; later rounds keep its best rank
            found = r
            ranks[r + 1:] = ranks[r]
            break
        if r == rounds:
            break
        answer = true_answer(result.question_id or "", scene)
        if answer is None:  # nothing left to ask: the user describes one more object
            answer = object_phrase(scene.objects[r % len(scene.objects)], ALL)
        result = session.send(answer, answer=result.question is not None)
    if session.state.outcome is None:
        session.abandon()
    return ranks, found


def simulate(engine, scenes: list[Scene], target_paths: list[str], feedback: bool = False,
             rounds: int = ROUNDS, seed: int = 0, desc: str = "simulate") -> dict:
    """Run one session per scene; return per-session ranks and found rounds, and the
    ChatIR summary (cumulative Hits@1/5/10 per round, BRI, success by round)."""
    rng = random.Random(seed)
    ids = {p: i for i, p in enumerate(engine.index.paths)}
    vectors = engine.index.vectors()
    ranks = np.zeros((len(scenes), rounds + 1), np.int64)
    found_at: list[int | None] = []
    for n, (scene, target) in enumerate(tqdm(list(zip(scenes, target_paths)), desc=desc,
                                             unit="session")):
        ranks[n], found = one_session(engine, scene, target, ids, vectors, feedback, rounds, rng)
        found_at.append(found)
    return {"sessions": len(scenes), "rounds": rounds, "feedback": feedback,
            "questioner": engine.profile.questions.strategy, "fusion": engine.fusion.name,
            "gallery": len(engine.index),
            **{f"hits@{k}": cumulative_hits(ranks, k).round(2).tolist() for k in (1, 5, 10)},
            "bri": round(bri(ranks), 4),
            "found_by_round": [round(100 * float(np.mean([f is not None and f <= r
                                                          for f in found_at])), 2)
                               for r in range(rounds + 1)],
            "found_at": found_at}  # per session: the round it was found at, or None


def run(profile, sessions: int, gallery_size: int, variants: list[tuple[str, bool]],
        rounds: int = ROUNDS, seed: int = 0, first: int = 0) -> dict:
    """Simulate `sessions` users per (questioner strategy, feedback) variant over the first
    `gallery_size` world test scenes as the gallery (targets: scenes `first`, `first` + 1,
    ...)."""
    from dataclasses import replace

    from engine.factory import build_engine
    from engine.profile import GallerySpec
    from world.scene import sample_scene, split_seed

    if first < 0 or first + sessions > gallery_size:
        raise ValueError(f"--first ({first}) + --sessions ({sessions}) cannot exceed --gallery "
                         f"({gallery_size}): every target must be in the gallery")
    # top_k 10: "shown" is exactly what Hits@10 counts, so finding it and Hits@10 agree.
    base = replace(profile, gallery=GallerySpec(world_scenes=gallery_size), index=None, top_k=10,
                   show_pseudo_image=False, recording=replace(profile.recording, enabled=False))
    engine = build_engine(base)
    if engine.questioner is None:
        raise ValueError("simulated users answer the system's questions: set a question "
                         "bank ([questions] bank, e.g. world)")
    chosen = range(first, first + sessions)
    scenes = [sample_scene(split_seed("test", i)) for i in chosen]
    paths = [p for p in engine.index.paths if p.endswith(".png")]
    by_index = {int(p.rsplit("-", 1)[1].split(".")[0]): p for p in paths}
    targets = [by_index[i] for i in chosen]
    out = {"profile": profile.name, "first": first, "variants": {}}
    for strategy, feedback in variants:
        engine.profile = replace(base, questions=replace(base.questions, strategy=strategy))
        engine.questioner.strategy = strategy
        engine.questioner.rng = random.Random(seed)
        name = f"{strategy}{' + feedback' if feedback else ''}"
        out["variants"][name] = simulate(engine, scenes, targets, feedback, rounds, seed,
                                         desc=name)
    return out
