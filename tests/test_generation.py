import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from engine.paths import assets_dir
from generation.hub import HubGenerator
from generation.onnx_unet import ONNX_FILE, OnnxUNet, export_unet, unet_tag
from generation.spec import GenerationError
from generation.world import WorldGenerator
from generation.world_pipeline import WorldGeneratorPipeline
from retrieval.text_tower import TextTower


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
    # Not bit-equal: the shared tower may hold this prompt's clauses from an earlier test,
    # read in another batch (padding moves the states by ~1e-7).
    assert np.abs(a.images - b.images).max() < 1e-5
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


@pytest.fixture(scope="module")
def exported_tiny_pipeline(tiny_world_pipeline, tmp_path_factory):
    """A copy of the tiny pipeline folder with its UNet exported to ONNX (~30 s)."""
    folder = tmp_path_factory.mktemp("onnx") / "tiny"
    shutil.copytree(tiny_world_pipeline[1], folder)
    export_unet(tiny_world_pipeline[0].unet, folder / "unet")
    return folder


def test_onnx_runtime_draws_what_torch_draws(exported_tiny_pipeline, text_tower):
    """`auto` picks ONNX Runtime for a folder with a current export, and it draws the torch
    UNet's images: one prompt or several, with guidance (batch 2 per prompt) or without."""
    def never(*args, **kwargs):
        raise AssertionError("the torch UNet ran on the ONNX path")

    for guidance in (2.0, 1.0):
        on_onnx = WorldGenerator(exported_tiny_pipeline, text_tower, steps=3,
                                 guidance=guidance)
        on_torch = WorldGenerator(exported_tiny_pipeline, text_tower, steps=3,
                                  guidance=guidance, runtime="torch")
        assert (on_onnx.runtime, on_torch.runtime) == ("onnx", "torch")
        assert on_onnx.identity == on_torch.identity  # the same images: caches stay valid
        on_onnx.pipe.unet.forward = never
        prompts = ["a small green star", "two large yellow hexagons at the bottom on black",
                   "a red circle on a blue background"]
        for batch in (prompts[:1], prompts):
            drawn = zip(on_onnx.generate(batch, seed=7), on_torch.generate(batch, seed=7))
            for x, y in drawn:
                assert np.abs(pixels(x) - pixels(y)).max() <= 1


def test_the_generator_over_a_tower_on_onnx_draws_what_it_draws_on_torch(exported_tiny_pipeline,
                                                             text_tower, onnx_folder):
    """Over a tower whose layers run on ONNX Runtime (the clauses the layout parser reads),
    the generator draws what it draws over a torch tower."""
    tower = TextTower()
    tower.use_onnx(onnx_folder, threads=2, depths=[tower.depth])
    on_onnx = WorldGenerator(exported_tiny_pipeline, tower, steps=3)
    on_torch = WorldGenerator(exported_tiny_pipeline, text_tower, steps=3, runtime="torch")
    assert (tower.runtime, text_tower.runtime) == ("onnx", "torch")
    prompts = ["a small green star, how many objects are there? two", "a red circle on blue"]
    for x, y in zip(on_onnx.generate(prompts, seed=3), on_torch.generate(prompts, seed=3)):
        assert np.abs(pixels(x) - pixels(y)).max() <= 1


def test_onnx_export_that_cannot_be_used_is_never_drawn_with(exported_tiny_pipeline,
                                                             tmp_path, text_tower):
    """Exported from other weights, truncated, or missing: `onnx` refuses with what to do,
    `auto` draws with torch (and says so, unless there simply is no export)."""
    folder = tmp_path / "retrained"
    shutil.copytree(exported_tiny_pipeline, folder)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    with torch.no_grad():
        unet.conv_out.bias.add_(0.1)  # "retrained" without exporting again
    unet.save_pretrained(folder / "unet")
    with pytest.raises(GenerationError, match=f"other weights.*itir export-onnx {folder}"):
        WorldGenerator(folder, text_tower, runtime="onnx")
    with pytest.warns(UserWarning, match="exported from other weights.*Drawing with torch"):
        assert WorldGenerator(folder, text_tower).runtime == "torch"
    onnx_file = folder / "unet" / ONNX_FILE
    onnx_file.write_bytes(onnx_file.read_bytes()[:5000])  # an interrupted copy
    with pytest.raises(GenerationError, match="could not load"):
        WorldGenerator(folder, text_tower, runtime="onnx")
    with pytest.warns(UserWarning, match="could not load"):
        assert WorldGenerator(folder, text_tower).runtime == "torch"
    onnx_file.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no export at all is a normal folder: no warning
        assert WorldGenerator(folder, text_tower).runtime == "torch"
    with pytest.raises(GenerationError, match="has no model.onnx"):
        WorldGenerator(folder, text_tower, runtime="onnx")


def test_onnx_runtime_is_for_the_cpu_only(exported_tiny_pipeline, text_tower):
    gen = WorldGenerator(exported_tiny_pipeline, text_tower, runtime="torch")
    gen.device = torch.device("cuda")  # as a GPU profile would have it; nothing runs here
    with pytest.raises(GenerationError, match="CPU only, not cuda; set device=cpu"):
        gen._use_onnx("onnx", exported_tiny_pipeline / "unet")
    gen._use_onnx("auto", exported_tiny_pipeline / "unet")
    assert gen.runtime == "torch" and gen.pipe.onnx_unet is None


@pytest.mark.parametrize("name", ["world-generator", "world-generator-distilled"])
def test_shipped_generator_has_a_current_onnx_export(name):
    """A retrained UNet committed without `itir export-onnx` would quietly draw on torch at
    half the speed on a CPU: fail here instead."""
    folder = assets_dir() / name / "unet"
    OnnxUNet(folder, unet_tag(UNet2DConditionModel.from_pretrained(folder)), threads=1)


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


class SceneOracle:
    """Draws exactly the scene a description was made from: the wording bench's ceiling."""

    identity, size = "oracle", 32

    def __init__(self, scenes):
        from evaluation.fidelity import WORDINGS, described

        self.scene_of = {described(s, form): s for s in scenes for form in WORDINGS}

    def generate(self, prompts, seed=0):
        from world.render import render

        return [render(self.scene_of[p], self.size) for p in prompts]


def test_the_wording_bench_scores_a_perfect_drawing_as_perfect(shipped_encoder):
    from evaluation.bench import test_scenes
    from evaluation.fidelity import WORDINGS, bench_wording

    result = bench_wording(shipped_encoder, SceneOracle(test_scenes(40)), n=20, n_gallery=40)
    for form in WORDINGS:
        assert result[form]["background_right"] == 1.0, form
        assert result[form]["R@10"] == 1.0 and result[form]["R@1"] >= 0.8, form
    assert len({result[form]["example"] for form in WORDINGS}) == 3


def test_shipped_world_generator_reads_wording_it_never_trained_on(text_tower):
    """Described in held-out wording ("bg = grey; items = ..."), most scenes still get their
    background: the layout parser reads meaning, not the caption template."""
    from engine.profile import load_profile
    from evaluation.fidelity import background_colour, described
    from world.scene import sample_scene, split_seed

    gen = WorldGenerator(load_profile("world").generator_spec.location, text_tower)
    scenes = [sample_scene(split_seed("test", 70_000 + i)) for i in range(24)]
    images = gen.generate([described(s, "held-out wording") for s in scenes], seed=0)
    hits = sum(background_colour(pixels(im)) == s.background for s, im in zip(scenes, images))
    assert hits >= 18, f"background right in only {hits}/24 pseudo-images"
