import numpy as np
import pytest
import torch

from generation.base import GenerationError
from generation.hub import HubGenerator
from generation.world import WorldGenerator
from generation.world_unet import TINY, build_unet, sampling_scheduler
from tests.conftest import tiny_clip_text_config, write_tiny_clip_tokenizer


@pytest.fixture(scope="module")
def tiny_world_generator(tmp_path_factory, text_tower):
    folder = tmp_path_factory.mktemp("world-gen")
    torch.manual_seed(0)
    build_unet(TINY).save_pretrained(folder / "unet")
    sampling_scheduler().save_pretrained(folder / "scheduler")
    return WorldGenerator(folder, text_tower, steps=3, guidance=2.0)


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
    with pytest.raises(GenerationError, match="does not exist"):
        HubGenerator(str(tmp_path / "no-such-folder"))


def test_unreachable_hub_model_says_how_to_get_it_offline():
    with pytest.raises(GenerationError, match="--local-dir"):
        HubGenerator("nobody-here/no-such-model-xyz")


@pytest.fixture(scope="module")
def tiny_sd_folder(tmp_path_factory):
    """A random Stable Diffusion pipeline small enough to run in a test, saved to disk."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny-sd")
    vocab = write_tiny_clip_tokenizer(folder)
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(block_out_channels=(8, 16), norm_num_groups=8, latent_channels=4,
                          down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16),
        text_encoder=CLIPTextModel(CLIPTextConfig(**tiny_clip_text_config(vocab))),
        tokenizer=CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                model_max_length=77),
        unet=UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32,
            attention_head_dim=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
        scheduler=EulerDiscreteScheduler(steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder / "pipeline")
    return folder / "pipeline"


def test_tiny_hub_pipeline_loads_from_a_folder_and_generates(tiny_sd_folder):
    gen = HubGenerator(str(tiny_sd_folder), steps=2, guidance=0.0)
    images = gen.generate(["a red circle", "a blue square"], seed=3)
    assert [im.size for im in images] == [(16, 16), (16, 16)]
    gen._cache.clear()
    again = gen.generate(["a blue square"], seed=3)[0]
    assert np.abs(pixels(images[1]) - pixels(again)).max() <= 1
