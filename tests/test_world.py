import json
import random

import numpy as np

from itir.cli import main
from world.captions import PLACE, full_caption
from world.dialogs import make_dialog, round_query
from world.render import STYLES, render
from world.scene import COLOURS, FILLS, POSITIONS, SHAPES, SIZES, SPLITS, sample_scene, split_seed


def test_vocabulary_meets_the_design_floor():
    assert len(SHAPES) >= 6 and len(COLOURS) >= 8 and len(SIZES) == 3
    assert len(POSITIONS) == 9 and len(FILLS) >= 4 and len(STYLES) >= 4


def test_scenes_and_images_are_deterministic_by_seed():
    for seed in (0, 17, split_seed("test", 3)):
        a, b = sample_scene(seed), sample_scene(seed)
        assert a == b
        assert np.array_equal(np.asarray(render(a)), np.asarray(render(b)))
        assert make_dialog(a) == make_dialog(b)
    assert sample_scene(1) != sample_scene(2)


def test_splits_use_disjoint_seeds():
    starts = sorted(SPLITS.values())
    assert all(b - a >= 10_000_000 for a, b in zip(starts, starts[1:]))
    train = {split_seed("train", i) for i in range(1000)}
    test = {split_seed("test", i) for i in range(1000)}
    assert not train & test


def test_scene_structure():
    for seed in range(300):
        s = sample_scene(seed)
        assert 1 <= len(s.objects) <= 4
        assert len({o.position for o in s.objects}) == len(s.objects)  # one object per cell
        assert all(o.colour != s.background for o in s.objects)
        assert len({(o.colour, o.shape) for o in s.objects}) == len(s.objects)


def test_full_caption_names_every_fact():
    for seed in range(200):
        s = sample_scene(seed)
        cap = full_caption(s)
        assert s.background in cap
        for o in s.objects:
            assert f"{o.size} {o.colour} {o.fill} {o.shape} {PLACE[o.position]}" in cap


def test_dialog_is_chatir_shaped_and_answers_from_ground_truth():
    for seed in range(200):
        s = sample_scene(seed)
        dialog = make_dialog(s, random.Random(seed))
        assert len(dialog) == 11 and all(isinstance(t, str) and t for t in dialog)
        for turn in dialog[1:]:
            question, answer = turn.split("? ", 1)
            if question == "what color is the background":
                assert answer == s.background
            if question == "how many objects are there":
                assert answer == ["one", "two", "three", "four"][len(s.objects) - 1]
            if question.startswith("is there a ") and answer in ("yes", "no"):
                shape = question.removeprefix("is there a ")
                assert (answer == "yes") == any(o.shape == shape for o in s.objects)
        assert round_query(dialog, 2) == ", ".join(dialog[:3])


def test_rendered_colours_match_ground_truth():
    seen = 0
    for seed in range(100):
        s = sample_scene(seed)
        if s.style != "flat":
            continue
        img = np.asarray(render(s)).reshape(-1, 3).astype(int)
        assert (np.abs(img - COLOURS[s.background]).sum(1) < 10).mean() > 0.3
        for o in s.objects:
            if o.fill != "hollow":
                assert (np.abs(img - COLOURS[o.colour]).sum(1) < 10).sum() > 10, (s, o)
        seen += 1
    assert seen > 10


def test_world_build_cli_writes_images_ground_truth_and_chatir_files(tmp_path):
    assert main(["world", "build", "--n", "6", "--split", "test", "--out", str(tmp_path)]) == 0
    lines = (tmp_path / "scenes.jsonl").read_text().splitlines()
    assert len(lines) == 6
    record = json.loads(lines[0])
    assert record["seed"] == split_seed("test", 0)
    assert record["caption"] == full_caption(sample_scene(record["seed"]))
    dialogs = json.loads((tmp_path / "dialogs.json").read_text())
    corpus = json.loads((tmp_path / "corpus.json").read_text())
    assert [d["img"] for d in dialogs] == corpus
    assert all(len(d["dialog"]) == 11 for d in dialogs)
    assert all((tmp_path / p).is_file() for p in corpus)
