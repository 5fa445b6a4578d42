import json
import random

import numpy as np
import pytest
from PIL import Image

from itir.cli import main
from world.build import build_split, read_scenes
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
                *colour, shape = question.removeprefix("is there a ").split(" ")
                assert (answer == "yes") == any(
                    o.shape == shape and colour in ([], [o.colour]) for o in s.objects)
        assert round_query(dialog, 2) == ", ".join(dialog[:3])


def test_dialog_never_asks_a_yes_no_question_twice():
    # Test scene 0 once asked "is there a circle?" twice, a wasted round.
    for i in range(300):
        dialog = make_dialog(sample_scene(split_seed("test", i)))
        yes_no = [t for t in dialog[1:] if t.endswith(("? yes", "? no"))]
        assert len(yes_no) == len(set(yes_no))


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


def snapshot(folder):
    """Every file under `folder`, by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def check_consistent(folder, imgs):
    """scenes.jsonl, dialogs.json, corpus.json and images/ all list exactly `imgs`."""
    assert [r["img"] for r in read_scenes(folder)] == imgs
    assert [d["img"] for d in json.loads((folder / "dialogs.json").read_text())] == imgs
    assert json.loads((folder / "corpus.json").read_text()) == imgs
    assert sorted(str(p.relative_to(folder)) for p in (folder / "images").iterdir()) == imgs
    assert sorted(p.name for p in folder.iterdir()) == [
        "corpus.json", "dialogs.json", "images", "scenes.jsonl"]  # no staging folder left


def test_building_over_an_earlier_build_replaces_it(tmp_path):
    build_split(4, "val", tmp_path, size=16)
    build_split(2, "test", tmp_path, size=16)
    check_consistent(tmp_path, ["images/test-000000.png", "images/test-000001.png"])


def test_building_over_an_unfinished_build_replaces_it(tmp_path):
    # What a build killed before it wrote scenes.jsonl left behind (before builds staged).
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "train-000007.png").write_bytes(b"half a png")
    (tmp_path / "scenes.jsonl.tmp").write_text("{}\n")
    build_split(1, "test", tmp_path, size=16)
    check_consistent(tmp_path, ["images/test-000000.png"])


def test_an_interrupted_build_leaves_the_earlier_one_as_it_was(tmp_path):
    build_split(3, "test", tmp_path, size=16)
    before = snapshot(tmp_path)

    def interrupt(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_split(5, "val", tmp_path, size=16, progress=interrupt)
    assert snapshot(tmp_path) == before
    check_consistent(tmp_path, [f"images/test-00000{i}.png" for i in range(3)])


@pytest.mark.parametrize("files", [
    ["photo.jpg"],
    ["scenes.jsonl", "notes.txt"],  # a world build the user added files to
    ["scenes.jsonl", "images/holiday.png"],
])
def test_a_folder_that_is_not_a_world_build_is_refused_untouched(tmp_path, files):
    for name in files:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(f"the user's {name}")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="not an earlier world build.*pick an empty or new"):
        build_split(2, "test", tmp_path, size=16)
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({f.split("/")[0] for f in files})


def test_build_a_range_of_scenes_from_first(tmp_path):
    build_split(2, "test", tmp_path, size=32, first=120)
    check_consistent(tmp_path, ["images/test-000120.png", "images/test-000121.png"])
    for i, record in zip((120, 121), read_scenes(tmp_path)):
        assert record["seed"] == split_seed("test", i)
        assert record["caption"] == full_caption(sample_scene(record["seed"]))
        with Image.open(tmp_path / record["img"]) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")),
                                  np.asarray(render(sample_scene(record["seed"]), 32)))


@pytest.mark.parametrize("args, message", [
    (dict(n=2, split="test", first=-1), "--first must be at least 0, got -1"),
    (dict(n=0, split="test"), "--n must be at least 1"),
    (dict(n=2, split="test", first=9_999_999), "scene index 10000000 out of range"),
    (dict(n=1, split="dev"), "unknown split 'dev'"),
])
def test_a_bad_range_is_refused_before_anything_is_written(tmp_path, args, message):
    with pytest.raises(ValueError, match=message):
        build_split(out=tmp_path / "world", size=16, **args)
    assert not (tmp_path / "world").exists()


def test_a_file_is_not_a_build_folder(tmp_path):
    (tmp_path / "world").write_text("a file")
    with pytest.raises(ValueError, match="is a file; pick an empty or new folder"):
        build_split(1, "test", tmp_path / "world", size=16)


def test_wrong_answers_change_only_answers_and_only_when_asked_for():
    scene = sample_scene(split_seed("test", 5))
    honest, lying = make_dialog(scene), make_dialog(scene, wrong=0.5)
    assert make_dialog(scene, wrong=0.0) == honest
    questions = [t.split("? ", 1)[0] for t in honest[1:]]
    assert [t.split("? ", 1)[0] for t in lying[1:]] == questions
    changed = sum(a != b for a, b in zip(honest[1:], lying[1:]))
    assert 2 <= changed <= 8
    assert all(make_dialog(sample_scene(i), wrong=1.0)[1:] != make_dialog(sample_scene(i))[1:]
               for i in range(20))


def test_a_preamble_opens_every_first_message_and_changes_nothing_else(tmp_path):
    import json

    from world.build import build_split
    plain = json.loads((build_split(3, "test", tmp_path / "a", size=16) / "dialogs.json")
                       .read_text())
    long = json.loads((build_split(3, "test", tmp_path / "b", size=16,
                                   preamble="  I saw it once. ") / "dialogs.json").read_text())
    assert [d["dialog"][0] for d in long] == [f"I saw it once. {d['dialog'][0]}"
                                             for d in plain]
    assert [d["dialog"][1:] for d in long] == [d["dialog"][1:] for d in plain]
