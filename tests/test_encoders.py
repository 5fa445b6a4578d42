from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.encoders import BLIPEncoder, CLIPEncoder, WorldEncoder
from retrieval.world_encoder import WorldDualEncoder, WorldEncoderConfig, with_tower_layers
from world.captions import full_caption
from world.render import render
from world.scene import sample_scene, split_seed


def check_embeddings(x: np.ndarray, n: int, d: int):
    assert x.shape == (n, d) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_world_encoder_shapes_dtype_and_norm(random_world_encoder):
    enc = random_world_encoder
    check_embeddings(enc.encode_texts(["a red circle", "two blue squares on green"]), 2, enc.dim)
    images = [render(sample_scene(i)) for i in range(3)] + [Image.new("RGBA", (50, 80))]
    check_embeddings(enc.encode_images(images), 4, enc.dim)
    check_embeddings(enc.encode_images([Image.new("RGB", (32, 32))]), 1, enc.dim)
    assert enc.encode_texts([]).shape == (0, enc.dim)
    assert enc.identity.startswith("world:random-encoder@")


def test_world_encoder_is_deterministic_and_batch_independent(random_world_encoder):
    texts = ["a small pink star at the top", "a large black hollow hexagon on the left"]
    both = random_world_encoder.encode_texts(texts)
    one = random_world_encoder.encode_texts(texts[1:])
    assert np.allclose(both[1], one[0], atol=1e-5)


def test_missing_world_weights_say_what_to_do(tmp_path, text_tower):
    with pytest.raises(FileNotFoundError, match="itir train-encoder"):
        WorldEncoder(tmp_path / "missing", text_tower)


def test_world_encoder_round_trips_through_save_pretrained(random_world_encoder_dir, tmp_path,
                                                           random_world_encoder, text_tower):
    """from_pretrained gives back the same config and weights, and a re-save the same file."""
    model = WorldDualEncoder.from_pretrained(random_world_encoder_dir)
    assert model.config == WorldEncoderConfig() and not model.training
    model.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "config.json").read_text() == (
        random_world_encoder_dir / "config.json").read_text()
    again = WorldEncoder(tmp_path / "again", text_tower)
    assert again.identity.split("@")[1] == random_world_encoder.identity.split("@")[1]
    texts = ["a red circle", "two blue squares on green"]
    assert np.array_equal(again.encode_texts(texts), random_world_encoder.encode_texts(texts))


def test_copied_tower_layers_compute_what_the_tower_does(text_tower):
    """The text head's own copies of the top layers, fed the states from below them, give the
    tower's last states: training starts from exactly the pretrained model."""
    texts = ["at the top on the left, a wee lozenge", "hi"]
    last, mask = text_tower(texts)
    states, mask_below = text_tower(texts, -3)
    assert states.shape == last.shape and not np.array_equal(states.numpy(), last.numpy())
    layers = text_tower.top_layers(2).eval()
    with torch.no_grad():
        for layer in layers:
            states = layer(states, src_key_padding_mask=~mask_below)
    assert torch.allclose(states[mask], last[mask], atol=1e-4)
    with pytest.raises(ValueError, match="hidden layers 0..6"):
        text_tower(texts, 9)


def test_an_encoder_with_tower_layers_embeds_as_before_and_round_trips(
        random_world_encoder_dir, random_world_encoder, text_tower, tmp_path):
    """Giving the head tower layers changes nothing until it trains; saved and loaded, the
    encoder reads the tower below its layers; a tower too shallow for them is refused."""
    model = with_tower_layers(WorldDualEncoder.from_pretrained(random_world_encoder_dir),
                              text_tower.top_layers(2))
    assert model.config.text_layers == 2 and model.text.states_layer == -3
    model.eval().save_pretrained(tmp_path / "layers")
    enc = WorldEncoder(tmp_path / "layers", text_tower)
    texts = ["a red circle", "two blue squares on green, at the bottom on the right"]
    assert np.allclose(enc.encode_texts(texts), random_world_encoder.encode_texts(texts),
                       atol=1e-4)
    assert enc.text_identity != random_world_encoder.text_identity
    assert enc.image_identity == random_world_encoder.image_identity
    with pytest.raises(ValueError, match="already owns 2"):
        with_tower_layers(model, text_tower.top_layers(2))
    # Grown to three, the head keeps its (here: changed) two copies on top of a fresh third.
    with torch.no_grad():  # (a bias after the layer's LayerNorm would cancel: not that one)
        model.text.tower_top[1].linear1.bias.add_(0.5)
    grown = with_tower_layers(model, text_tower.top_layers(3)).eval()
    assert grown.text.states_layer == -4
    assert torch.equal(grown.text.tower_top[2].linear1.bias, model.text.tower_top[1].linear1.bias)
    model.eval().save_pretrained(tmp_path / "changed")
    grown.save_pretrained(tmp_path / "grown")
    changed = WorldEncoder(tmp_path / "changed", text_tower).encode_texts(texts)
    assert not np.allclose(changed, random_world_encoder.encode_texts(texts), atol=1e-3)
    assert np.allclose(WorldEncoder(tmp_path / "grown", text_tower).encode_texts(texts),
                       changed, atol=1e-4)
    deep = replace(model.config, text_layers=7)
    WorldDualEncoder(deep).save_pretrained(tmp_path / "deep")
    with pytest.raises(ValueError, match="owns 7 top layers"):
        WorldEncoder(tmp_path / "deep", text_tower)


def test_clip_backend_loads_a_saved_model_and_embeds(tiny_clip_dir):
    enc = CLIPEncoder(str(tiny_clip_dir))
    assert enc.dim == 16 and enc.identity == f"clip:{tiny_clip_dir}"
    check_embeddings(enc.encode_texts(["a red circle", "a blue square"]), 2, 16)
    check_embeddings(enc.encode_images([render(sample_scene(0)), Image.new("P", (40, 30))]),
                     2, 16)


def test_clip_backend_missing_model_is_clear(tmp_path):
    with pytest.raises(OSError, match="could not load CLIP model"):
        CLIPEncoder(str(tmp_path / "nothing-here"))


def test_shipped_world_encoder_finds_scenes_from_full_captions(shipped_encoder):
    """On a fresh 200-scene test gallery, a full caption puts its scene in the top 10."""
    scenes = [sample_scene(split_seed("test", 50_000 + i)) for i in range(200)]
    img = shipped_encoder.encode_images([render(s, 64) for s in scenes])
    txt = shipped_encoder.encode_texts([full_caption(s) for s in scenes])
    scores = txt @ img.T
    ranks = (scores > np.diag(scores)[:, None]).sum(1)
    assert (ranks < 10).mean() > 0.8


def test_blip_backend_loads_a_saved_retrieval_model_and_embeds_with_its_itc_heads(
        tiny_blip_dir):
    enc = BLIPEncoder(str(tiny_blip_dir))
    assert enc.dim == 16 and enc.identity == f"blip:{tiny_blip_dir}"
    dialog = ", ".join(["a red circle"] + ["what color is the background? blue"] * 40)
    texts = enc.encode_texts(["a red circle", dialog])  # ~500 word pieces: cut at 256
    check_embeddings(texts, 2, 16)
    check_embeddings(enc.encode_images([render(sample_scene(0)), Image.new("P", (40, 30))]),
                     2, 16)
    # The same numbers as BLIP's own ITC score (forward with use_itm_head=False).
    import torch

    batch = enc.processor(images=[render(sample_scene(1))], text=["a red circle"],
                          return_tensors="pt")
    with torch.no_grad():
        itc = enc.model(**batch, use_itm_head=False).itm_score.item()
    image = enc.encode_images([render(sample_scene(1))])[0]
    assert abs(float(image @ enc.encode_texts(["a red circle"])[0]) - itc) < 1e-5


@pytest.mark.parametrize("backend", [CLIPEncoder, BLIPEncoder])
def test_hub_encoders_offline_say_how_to_use_a_local_copy(backend):
    with pytest.raises(OSError, match="hf download nobody/no-such-model --local-dir DIR"):
        backend("nobody/no-such-model")


def test_an_unreachable_hub_fails_in_seconds_not_after_retries(monkeypatch):
    """Without HF_HUB_OFFLINE, a hub that cannot be reached is noticed at once (one connect
    attempt), and a model id not in the local cache fails with its message."""
    import time

    from huggingface_hub import constants

    from retrieval import device

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    device.hub_reachable.cache_clear()
    try:
        start = time.perf_counter()
        assert device.offline_kwargs("nobody/no-such-model") == {"local_files_only": True}
        with pytest.raises(OSError, match="hf download nobody/no-such-model"):
            CLIPEncoder("nobody/no-such-model")
        assert time.perf_counter() - start < 5
    finally:
        device.hub_reachable.cache_clear()
    assert device.offline_kwargs(".") == {}  # a local folder loads as it is


def test_each_side_has_its_own_identity(random_world_encoder, image_tuned_world_encoder):
    """Cached embeddings are keyed per side: a new image tower (in a renamed folder) keeps the
    text side's identity, so cached query embeddings are reused, and changes the image side's."""
    tuned = image_tuned_world_encoder
    assert tuned.text_identity == random_world_encoder.text_identity
    assert tuned.image_identity != random_world_encoder.image_identity
    assert tuned.identity != random_world_encoder.identity
    texts = ["a red circle", "two blue squares on green"]
    assert np.array_equal(tuned.encode_texts(texts), random_world_encoder.encode_texts(texts))
