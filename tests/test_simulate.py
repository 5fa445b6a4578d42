"""Simulated users (`itir simulate`): they answer the system's questions from the ground truth
and drive the same session the UI drives."""

import random

import numpy as np
import pytest

from engine.profile import load_profile
from evaluation import simulate
from world.scene import Scene, SceneObject


def test_the_simulated_user_answers_from_the_ground_truth():
    scene = Scene(seed=0, background="blue", style="flat", objects=(
        SceneObject("circle", "red", "small", "top left", "striped"),
        SceneObject("star", "yellow", "large", "center", "solid")))
    answer = lambda question: simulate.true_answer(question, scene)
    # "The main object" is the largest one.
    assert [answer(q) for q in ("shape", "colour", "size", "fill", "position")] == [
        "star", "yellow", "large", "solid", "in the center"]
    assert (answer("background"), answer("count"), answer("style")) == (
        "blue", "two", "a flat drawing")
    assert answer("no such question") is None


def test_simulated_sessions_run_end_to_end_and_report_the_chatir_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("ITIR_HOME", str(tmp_path))
    profile = load_profile("world", ["fusion=text"])
    targets = []
    one_session = simulate.one_session

    def recorded(engine, scene, target, *args):
        targets.append(int(target.rsplit("-", 1)[1].split(".")[0]))
        return one_session(engine, scene, target, *args)

    monkeypatch.setattr(simulate, "one_session", recorded)
    out = simulate.run(profile, sessions=6, gallery_size=40, first=34,  # the last 6 scenes
                       variants=[("information", False), ("random", True)], rounds=3)
    assert set(out["variants"]) == {"information", "random + feedback"} and out["first"] == 34
    assert targets == [*range(34, 40)] * 2
    for result in out["variants"].values():
        assert result["sessions"] == 6 and result["gallery"] == 40
        for k in (1, 5, 10):
            hits = np.array(result[f"hits@{k}"])
            assert hits.shape == (4,) and (np.diff(hits) >= 0).all()  # cumulative
            assert 0 <= hits.min() and hits.max() <= 100
    # A session ends as found once its target is among the 10 shown: Hits@10 exactly, with
    # feedback too (the images it rejected are hidden, so they do not count in the rank).
    for result in out["variants"].values():
        assert result["found_by_round"] == result["hits@10"]
        assert len(result["found_at"]) == 6
    with pytest.raises(ValueError, match="cannot exceed --gallery"):
        simulate.run(profile, sessions=6, gallery_size=40, first=35, variants=[])


def test_the_rank_does_not_count_images_the_session_hides():
    gallery = np.eye(4, dtype=np.float32)
    result = type("Result", (), {"query_vector": np.array([[0.9, 0.8, 0.7, 0.1]], np.float32)})
    assert simulate.full_rank(gallery, result, target_id=2) == 2
    assert simulate.full_rank(gallery, result, target_id=2, hidden=[0]) == 1
    assert simulate.full_rank(gallery, result, target_id=2, hidden=[3]) == 2  # below it


def test_a_feedback_user_clicks_what_is_on_screen_and_is_ranked_past_what_it_hid(
        tmp_path, monkeypatch):
    from dataclasses import replace

    from engine.factory import build_engine
    from engine.profile import GallerySpec
    from engine.session import SearchSession
    from world.scene import sample_scene, split_seed

    monkeypatch.setenv("ITIR_HOME", str(tmp_path))
    profile = load_profile("world", ["fusion=text"])
    # Three shown of 120, and twelve sessions: most find the target on their first screens,
    # and a few have to click both ways (5 "not this" and 4 "more like this" with the
    # encoder of 2026-12-05; six sessions of 40 scenes had stopped clicking "more").
    engine = build_engine(replace(profile, gallery=GallerySpec(world_scenes=120), index=None,
                                  top_k=3, show_pseudo_image=False,
                                  recording=replace(profile.recording, enabled=False)))
    ids = {p: i for i, p in enumerate(engine.index.paths)}
    screen, clicks, ranked = [], [], []  # what was shown last; each click; each rank's skip
    send, click, full_rank = SearchSession.send, SearchSession.click, simulate.full_rank

    def sent(session, *args, **kwargs):
        result = send(session, *args, **kwargs)
        screen[:] = [h.path for h in result.hits]
        return result

    def clicked(session, path, kind):
        clicks.append((kind, path in screen))  # was it on screen when clicked?
        if kind == "less":
            rejected.add(path)
        result = click(session, path, kind)
        if result is not None:
            screen[:] = [h.path for h in result.hits]
        return result

    def rank(gallery, result, target_id, hidden=()):
        ranked.append((sorted(hidden), sorted(ids[p] for p in rejected)))
        return full_rank(gallery, result, target_id, hidden)

    rejected = set()
    monkeypatch.setattr(SearchSession, "send", sent)
    monkeypatch.setattr(SearchSession, "click", clicked)
    monkeypatch.setattr(simulate, "full_rank", rank)
    vectors, rng = engine.index.vectors(), random.Random(0)
    for i in range(12):
        target = next(p for p in ids if p.endswith(f"-{i:06d}.png"))
        rejected.clear()  # a new session hides nothing yet
        simulate.one_session(engine, sample_scene(split_seed("test", i)), target, ids, vectors,
                             True, 3, rng)
    assert clicks and all(on_screen for _, on_screen in clicks)  # never a picture gone by
    assert {"less", "more"} <= {kind for kind, _ in clicks}
    assert any(hidden for hidden, _ in ranked)  # some "not this" marks ...
    assert all(hidden == marked for hidden, marked in ranked)  # ... and exactly those skipped
