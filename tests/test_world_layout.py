"""The generator's layout stage: labels, the spatial map's geometry, reading by clauses."""

import random

import numpy as np
import torch

from generation.world_layout import (
    CELLS,
    MAP_CHANNELS,
    WorldLayoutParser,
    clause_states,
    expand_cells,
    scene_labels,
)
from world.phrasings import SYNONYMS, describe
from world.render import render
from world.scene import COLOURS, POSITIONS, Scene, sample_scene


def test_labels_mark_each_object_in_its_cell_and_nothing_elsewhere():
    scene = sample_scene(3)
    labels = scene_labels(scene)
    cells = labels[: CELLS * 5].view(CELLS, 5)
    occupied = {POSITIONS.index(o.position) for o in scene.objects}
    assert {i for i in range(CELLS) if cells[i, 0] == 1} == occupied
    assert all((cells[i, 1:] == -100).all() for i in range(CELLS) if i not in occupied)
    assert labels[CELLS * 5] == list(COLOURS).index(scene.background)
    assert labels[-1] == len(scene.objects) - 1


def test_spatial_map_cells_are_where_the_renderer_draws_them():
    per_cell = torch.arange(CELLS, dtype=torch.float32).view(1, CELLS, 1)
    grid = expand_cells(per_cell, 32)[0, 0].numpy()
    scene = sample_scene(11)
    for obj in scene.objects:  # drawn alone, each object's pixels fall in its own map cell
        alone = Scene(scene.seed, scene.background, "flat", (obj,))
        image = np.asarray(render(alone, 32)).astype(float)
        drawn = np.abs(image - COLOURS[scene.background]).sum(-1) > 60
        assert drawn.sum() > 0
        assert (grid[drawn] == POSITIONS.index(obj.position)).mean() > 0.9


def test_clauses_are_read_separately_and_packed_per_prompt(text_tower):
    prompts = ["a red circle, what color is the background? blue", "", "a star"]
    states, mask, clause_ids = clause_states(text_tower, prompts)
    assert states.shape[0] == 3 and mask.shape == clause_ids.shape == states.shape[:2]
    assert clause_ids[0, mask[0]].unique().tolist() == [0, 1]
    assert mask[1].sum() == len(text_tower([""])[1][0])  # empty reads as ""
    one, one_mask = text_tower(["a star"])
    assert torch.allclose(states[2, mask[2]], one[0, one_mask[0]], atol=1e-5)
    parser = WorldLayoutParser(width=32, heads=2).eval()
    layout = parser(states, mask, clause_ids)
    assert layout.spatial_map(16).shape == (3, MAP_CHANNELS, 16, 16)
    feats = layout.cell_features()  # attribute beliefs never exceed P(object)
    assert (feats[..., 1:] <= feats[..., :1] + 1e-6).all()


def test_free_phrasings_are_varied_and_heldout_wording_is_unseen_in_training():
    import re

    from world.phrasings import LIST_JOINS, PLACES, STYLES

    scene = sample_scene(3)
    train = [describe(sample_scene(i), random.Random(i)) for i in range(300)]
    held = [describe(sample_scene(i), random.Random(i), "heldout") for i in range(300)]
    assert len(set(train)) == len(set(held)) == 300
    assert len({describe(scene, random.Random(i)) for i in range(50)}) > 40
    # Every held-out option, from every table, is absent from training descriptions.
    tables = [*SYNONYMS.values(), PLACES, STYLES]
    unseen = {p for table in tables for _, held_out in table.values() for p in held_out}
    unseen |= {"bg =", "items =", "show me an image of", "do you have one where", "sit on"}
    unseen |= {j.strip() for j in LIST_JOINS[1]}
    corpus = "\n".join(train)
    leaked = [p for p in unseen if re.search(rf"(?<![\w-]){re.escape(p)}(?![\w-])", corpus)]
    assert not leaked
    assert sum(any(p in t for p in unseen) for t in held) > 250  # and held-out ones use them


def test_pipeline_refuses_a_parser_and_unet_that_do_not_fit(text_tower):
    import pytest

    from generation.world_pipeline import WorldGeneratorPipeline
    from generation.world_unet import TINY, build_unet, sampling_scheduler

    parser = WorldLayoutParser(width=48, heads=2)  # TINY's UNet attends 32-wide slots
    with pytest.raises(ValueError, match="cross-attends 32-wide slots"):
        WorldGeneratorPipeline(parser, build_unet(TINY), sampling_scheduler(), text_tower)


def test_phrasings_are_the_same_in_every_process_and_parts_hold_out_one_kind_at_a_time():
    import os
    import subprocess
    import sys

    import pytest

    code = ("import random; from world.phrasings import describe; from world.scene import "
            "sample_scene; print([describe(sample_scene(i), random.Random(i), partial=True) "
            "for i in range(40)])")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2")}
    assert len(runs) == 1  # string hashing must not decide what a description says
    scenes = [sample_scene(i) for i in range(200)]
    every = [describe(s, random.Random(i), "heldout") for i, s in enumerate(scenes)]
    for part in ("places", "frames"):
        one = [describe(s, random.Random(i), "heldout", parts=(part,))
               for i, s in enumerate(scenes)]
        train = [describe(s, random.Random(i)) for i, s in enumerate(scenes)]
        assert 0 < sum(a != b for a, b in zip(one, train)) < 200
        assert one != every
    assert "bg = " not in "".join(describe(s, random.Random(i), "heldout", parts=("places",))
                                  for i, s in enumerate(scenes))
    with pytest.raises(ValueError, match="unknown parts"):
        describe(scenes[0], random.Random(0), "heldout", parts=("verbs",))


def test_varied_wording_never_says_what_held_out_wording_says():
    import re

    import pytest

    from world.varied import HELD_OUT_WORDS, MORE_WORDS, Extra, says_held_out, unknown_word_pool

    pool = unknown_word_pool(["violin", "piano", "wee", "red", "crimson", "lozenge", "x1", "at",
                              "chess", "circles", "maroon", "left", "two", "background"])
    # Out: attribute, place, count and frame words, held-out words and their stems, non-words.
    assert pool == ("piano", "violin")
    extra = Extra(unknown_words=pool)
    texts = [describe(sample_scene(i), random.Random(i), extra=extra) for i in range(300)]
    words = {w for t in texts for w in re.findall(r"[a-z]+", t.lower())}
    assert not words & HELD_OUT_WORDS
    # The wider forms are used, unknown words come at about the set rate ...
    assert sum(w in ("piano", "violin") for t in texts for w in t.split()) > 100
    assert len({p for t in texts for p in extra.places["top left"] if p in t}) > 30
    more = {w for table in MORE_WORDS.values() for ws in table.values() for w in ws}
    said = {w for t in texts for w in more if re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", t)}
    assert len(said) > 40
    # ... and without `extra` descriptions are what they always were.
    assert [describe(sample_scene(i), random.Random(i)) for i in range(5)] == [
        describe(sample_scene(i), random.Random(i), extra=None) for i in range(5)]
    # A held-out phrase in other dress is refused, as is a held-out-only word.
    assert says_held_out("left middle") and says_held_out("a wee box")
    assert says_held_out("upper-left-hand")  # held-out "upper-left" inside
    assert not says_held_out("middle left")
    with pytest.raises(ValueError, match="held-out"):
        Extra(frames=("{objs} in the left middle of {bg}",))
    with pytest.raises(ValueError, match="held-out"):
        Extra(places={"center": ("dead centre",)})
    with pytest.raises(ValueError, match="extra training forms"):
        describe(sample_scene(1), random.Random(1), "heldout", extra=extra)
