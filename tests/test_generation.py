import json

import numpy as np
import pytest
import torch

from generation.hub import HubGenerator
from generation.spec import GenerationError
from generation.world import WorldGenerator
from generation.world_pipeline import WorldGeneratorPipeline


@pytest.fixture(scope="module")
def tiny_world_generator(tiny_world_pipeline, text_tower):
    return WorldGenerator(tiny_world_pipeline[1], text_tower, steps=3, guidance=2.0)


def test_saved_world_pipeline_loads_alone_and_draws_the_same_image(tiny_world_pipeline,
                                                                    text_tower):
    """from_pretrained(folder) with nothing else given: the config names the text tower, which
    loads from the offline package; the reloaded pipeline draws the original's image."""
    pipe, folder = tiny_world_pipeline
    index = json.loads((folder / "model_index.json").read_text())
    assert index["text_tower_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert not (folder / "text_tower").exists()  # named, not stored
    loaded = WorldGeneratorPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.text_tower is not text_tower
    prompt, gen = ["a red circle on a blue background"], torch.Generator()
    a = pipe(prompt, num_inference_steps=3, generator=gen.manual_seed(4), output_type="np")
    b = loaded(prompt, num_inference_steps=3, generator=gen.manual_seed(4), output_type="np")
    assert np.array_equal(a.images, b.images)
    shared = WorldGeneratorPipeline.from_pretrained(folder, text_tower=text_tower)
    assert shared.text_tower is text_tower
    shared.save_pretrained(folder.parent / "again")  # and saving round-trips the config
    again = json.loads((folder.parent / "again" / "model_index.json").read_text())
    assert {k: v for k, v in again.items() if k != "_name_or_path"} == index


def pixels(image):
    return np.asarray(image).astype(int)


def test_same_seed_same_image_other_seed_other_image(tiny_world_generator):
    gen = tiny_world_generator
    a = gen.generate(["a red circle on a blue background"], seed=1)[0]
    gen._cache.clear()
    b = gen.generate(["a red circle on a blue background"], seed=1)[0]
    c = gen.generate(["a red circle on a blue background"], seed=2)[0]
    assert a.size == (32, 32)
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_batch_equals_one_by_one(tiny_world_generator):
    gen = tiny_world_generator
    prompts = ["a small green star", "two large yellow hexagons at the bottom on black"]
    gen._cache.clear()
    batched = gen.generate(prompts, seed=5, n=2)
    gen._cache.clear()
    single = [img for p in prompts for img in gen.generate([p], seed=5, n=2)]
    assert len(batched) == 4
    for x, y in zip(batched, single):
        assert np.abs(pixels(x) - pixels(y)).max() <= 1  # float reduction order only


def test_cache_hit_returns_the_same_image_without_the_model(tiny_world_generator):
    gen = tiny_world_generator
    first = gen.generate(["a purple cross"], seed=9)[0]
    calls = gen.model_calls
    again = gen.generate(["a purple cross"], seed=9)[0]
    assert gen.model_calls == calls
    assert np.array_equal(pixels(first), pixels(again))
    gen.generate(["a purple cross"], seed=10)
    assert gen.model_calls == calls + 1


def test_empty_prompt_and_missing_model_are_clear(tiny_world_generator, tmp_path, text_tower):
    with pytest.raises(ValueError, match="empty prompt"):
        tiny_world_generator.generate(["  "])
    with pytest.raises(GenerationError, match="itir train-generator"):
        WorldGenerator(tmp_path / "nothing", text_tower)
    with pytest.raises(GenerationError, match="no-such-folder: no such folder"):
        HubGenerator(str(tmp_path / "no-such-folder"))


def test_unreachable_hub_model_says_how_to_get_it_offline():
    with pytest.raises(GenerationError, match="--local-dir"):
        HubGenerator("nobody-here/no-such-model-xyz")


def test_tiny_hub_pipeline_loads_from_a_folder_and_generates(tiny_sd_folder):
    gen = HubGenerator(str(tiny_sd_folder), steps=2, guidance=0.0)
    images = gen.generate(["a red circle", "a blue square"], seed=3)
    assert [im.size for im in images] == [(16, 16), (16, 16)]
    gen._cache.clear()
    again = gen.generate(["a blue square"], seed=3)[0]
    assert np.abs(pixels(images[1]) - pixels(again)).max() <= 1


def test_shipped_world_generator_follows_the_caption(text_tower):
    """The pseudo-image's background is the caption's background colour for most captions."""
    from engine.profile import load_profile
    from world.captions import full_caption
    from world.scene import COLOURS, sample_scene, split_seed

    gen = WorldGenerator(load_profile("world").generator_spec.location, text_tower)
    scenes = [sample_scene(split_seed("test", 70_000 + i)) for i in range(24)]
    images = gen.generate([full_caption(s) for s in scenes], seed=0)
    names, palette = list(COLOURS), np.array(list(COLOURS.values()), dtype=float)
    hits = 0
    for scene, image in zip(scenes, images):
        x = pixels(image).astype(float)
        border = np.concatenate([x[:2].reshape(-1, 3), x[-2:].reshape(-1, 3),
                                 x[:, :2].reshape(-1, 3), x[:, -2:].reshape(-1, 3)])
        nearest = names[np.linalg.norm(palette - np.median(border, 0), axis=1).argmin()]
        hits += nearest == scene.background
    assert hits >= 8, f"background right in only {hits}/12 pseudo-images"
