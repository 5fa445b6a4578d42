"""Simulated users (`itir simulate`): they answer the system's questions from the ground truth
and drive the same session the UI drives."""

import numpy as np

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
    out = simulate.run(profile, sessions=6, gallery_size=40,
                       variants=[("information", False), ("random", True)], rounds=3)
    assert set(out["variants"]) == {"information", "random + feedback"}
    for result in out["variants"].values():
        assert result["sessions"] == 6 and result["gallery"] == 40
        for k in (1, 5, 10):
            hits = np.array(result[f"hits@{k}"])
            assert hits.shape == (4,) and (np.diff(hits) >= 0).all()  # cumulative
            assert 0 <= hits.min() and hits.max() <= 100
    # A session ends as found once its target is among the 10 shown: Hits@10 exactly (with
    # feedback, rejected images are hidden, so a target ranked 11th may be on screen).
    plain, clicked = out["variants"]["information"], out["variants"]["random + feedback"]
    assert plain["found_by_round"] == plain["hits@10"]
    assert (np.array(clicked["found_by_round"]) >= np.array(clicked["hits@10"])).all()
