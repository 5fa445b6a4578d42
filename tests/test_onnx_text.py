"""The text side on ONNX Runtime: the states and embeddings torch gives, from graphs exported
once per weights into a cache folder."""

import numpy as np
import pytest
import torch
from torch import nn

from retrieval import onnx_graph
from retrieval.encoders import WorldEncoder
from retrieval.onnx_graph import OnnxGraph, TokenLayers
from retrieval.text_tower import TextTower
from retrieval.world_encoder import WorldDualEncoder, with_tower_layers

# Lengths that differ (padding) and one past the tower's 128 tokens (truncated): no graph may
# keep the lengths it was traced with.
TEXTS = ["hi", "a large blue square in the top left over green, what color is the "
         "background? green", "two red circles", "far " * 200]


def test_the_towers_layers_compute_what_the_transformers_model_does(text_tower):
    """The tower runs only the layers a reader asks for, over its embedding layer's states:
    at every depth they are the states of transformers' own forward pass."""
    batch = text_tower.tokenizer(TEXTS, padding=True, truncation=True, max_length=128,
                                 return_tensors="pt")
    with torch.no_grad():
        hidden = text_tower.model(**batch, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"].bool()
    for layer in (0, 1, 4, 6, -1, -3):
        states, got = text_tower(TEXTS, layer)
        assert torch.equal(got, mask)
        assert torch.allclose(states[mask], hidden[layer][mask], atol=1e-5)


def test_the_tower_on_onnx_gives_the_torch_states(text_tower, onnx_folder):
    tower = TextTower()
    tower.use_onnx(onnx_folder, threads=2, depths=[6])
    assert (tower.runtime, text_tower.runtime) == ("onnx", "torch")
    assert len(list(onnx_folder.glob("text-tower-6-v1-*.onnx"))) == 1
    for texts in (TEXTS, TEXTS[1:2]):
        (ours, mask), (ref, ref_mask) = tower(texts), text_tower(texts)
        assert torch.equal(mask, ref_mask)
        assert torch.allclose(ours[mask], ref[mask], atol=1e-4)
    clauses = ["a small green star", "how many objects are there? two"]
    for ours, ref in zip(tower.states_each(clauses), text_tower.states_each(clauses)):
        assert ours.shape == ref.shape and torch.allclose(ours, ref, atol=1e-4)


def test_the_world_encoder_on_onnx_embeds_as_on_torch(random_world_encoder_dir,
                                                      random_world_encoder, text_tower,
                                                      onnx_folder):
    """Tower layers and head run as one graph; the embeddings, and so the identity that
    caches and indexes are keyed by, stay the torch encoder's."""
    enc = WorldEncoder(random_world_encoder_dir, text_tower, runtime="onnx",
                       onnx_folder=onnx_folder)
    assert (enc.runtime, random_world_encoder.runtime) == ("onnx", "torch")
    assert enc.identity == random_world_encoder.identity
    assert enc.text_identity == random_world_encoder.text_identity
    for texts in (TEXTS, TEXTS[:1]):
        assert np.allclose(enc.encode_texts(texts), random_world_encoder.encode_texts(texts),
                           atol=1e-5)


def test_an_export_that_fails_is_torch_under_auto_and_an_error_under_onnx(
        random_world_encoder_dir, text_tower, tmp_path):
    blocked = tmp_path / "a-file"  # the graph folder's place is taken by a file
    blocked.write_text("")
    with pytest.warns(UserWarning, match="could not export world-text.*runs on torch"):
        enc = WorldEncoder(random_world_encoder_dir, text_tower, runtime="auto",
                           onnx_folder=blocked)
    assert enc.runtime == "torch"
    with pytest.raises(ValueError, match="could not export world-text.*ITIR_ONNX_FOLDER"):
        WorldEncoder(random_world_encoder_dir, text_tower, runtime="onnx", onnx_folder=blocked)
    with pytest.raises(ValueError, match="runs on the CPU, from a folder"):
        WorldEncoder(random_world_encoder_dir, text_tower, runtime="onnx")
    tower = TextTower()
    with pytest.raises(RuntimeError, match="could not export text-tower-6"):
        tower.use_onnx(blocked, threads=1, depths=[6])
    assert tower.runtime == "torch" and tower(TEXTS[:1])[0].shape[-1] == tower.width


def test_an_encoder_with_tower_layers_on_onnx_embeds_as_it_was_trained_to(
        random_world_encoder_dir, text_tower, onnx_folder, tmp_path):
    """The shipped kind: the graph holds the tower's layers below the head's own copies of
    the top two, then the head; it embeds as training defined it (tower states from below
    the copies, then `encode_text`)."""
    model = with_tower_layers(WorldDualEncoder.from_pretrained(random_world_encoder_dir),
                              text_tower.top_layers(2))
    with torch.no_grad():  # make the copies differ from the tower's layers they came from
        for p in model.text.tower_top.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval().save_pretrained(tmp_path / "layers")
    on_onnx = WorldEncoder(tmp_path / "layers", text_tower, runtime="onnx",
                           onnx_folder=onnx_folder)
    on_torch = WorldEncoder(tmp_path / "layers", text_tower)
    with torch.no_grad():
        trained = torch.nn.functional.normalize(
            model.text(*text_tower(TEXTS, model.text.states_layer)), dim=-1).numpy()
    assert np.allclose(on_torch.encode_texts(TEXTS), trained, atol=1e-5)
    assert np.allclose(on_onnx.encode_texts(TEXTS), trained, atol=1e-5)


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = nn.Parameter(torch.tensor(factor))

    def forward(self, states, mask):
        return (states * self.factor * mask.unsqueeze(-1)).sum(1)


def test_a_graph_is_exported_once_per_weights_and_again_when_unreadable(tmp_path):
    states, mask = torch.randn(3, 7, 4), torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    graph = OnnxGraph(TokenLayers([], Scale(2.0)), 4, tmp_path, "scale", threads=1)
    assert torch.allclose(graph(states, mask), Scale(2.0)(states, mask), atol=1e-6)
    stamp = graph.path.stat().st_mtime_ns
    assert OnnxGraph(TokenLayers([], Scale(2.0)), 4, tmp_path, "scale", 1).path == graph.path
    assert graph.path.stat().st_mtime_ns == stamp  # loaded, not exported again
    other = OnnxGraph(TokenLayers([], Scale(3.0)), 4, tmp_path, "scale", threads=1)
    assert other.path != graph.path  # other weights: another graph, never the stale one
    assert torch.allclose(other(states, mask), 1.5 * graph(states, mask), atol=1e-5)
    graph.path.write_bytes(b"half a graph")
    again = OnnxGraph(TokenLayers([], Scale(2.0)), 4, tmp_path, "scale", threads=1)
    assert torch.allclose(again(states, mask), Scale(2.0)(states, mask), atol=1e-6)
    assert not list(tmp_path.glob("*.partial"))


class Halved(Scale):  # the same weights (and name), other code: a digest cannot tell
    def forward(self, states, mask):
        return super().forward(states, mask) / 2


def test_a_graph_that_computes_something_else_is_exported_again(tmp_path):
    """A graph is named by its weights; settings and code are checked on load, so one left
    by other code (or another config over the same weights) is never used."""
    states, mask = torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool)
    old = OnnxGraph(TokenLayers([], Scale(2.0)), 4, tmp_path, "scale", threads=1)
    new = OnnxGraph(TokenLayers([], Halved(2.0)), 4, tmp_path, "scale", threads=1)
    assert new.path == old.path
    assert torch.allclose(new(states, mask), Halved(2.0)(states, mask), atol=1e-6)


def test_the_world_profile_runs_the_text_side_on_onnx_unless_told_torch(onnx_folder):
    """`[encoder] runtime` decides the whole text side: the encoder's layers and head, and
    the tower's layers the generator reads."""
    from engine.factory import load_models
    from engine.profile import load_profile

    on_onnx = load_models(load_profile("world", ["encoder.quantize=none"]))
    assert (on_onnx.encoder.runtime, on_onnx.text_tower.runtime) == ("onnx", "onnx")
    on_torch = load_models(load_profile("world", ["encoder.runtime=torch"]))
    assert (on_torch.encoder.runtime, on_torch.text_tower.runtime) == ("torch", "torch")
    assert on_torch.generator.runtime == "onnx"  # the UNet has a knob of its own
    query = ["a large red circle on blue, what color is the circle? red"]
    assert np.allclose(on_onnx.encoder.encode_texts(query), on_torch.encoder.encode_texts(query),
                       atol=1e-5)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_the_int8_text_side_embeds_close_to_float_and_keys_its_caches_apart(
        random_world_encoder_dir, random_world_encoder, text_tower, tmp_path):
    """Quantized once per weights, beside the float graph; queries' caches are keyed apart
    (their embeddings differ a little), the index's and fusion checkpoints' identity not."""
    enc = WorldEncoder(random_world_encoder_dir, text_tower, runtime="onnx",
                       onnx_folder=tmp_path, quantize="int8")
    assert enc.runtime == "onnx int8" and enc.text_path.path.name.endswith("-int8q1.onnx")
    assert enc.identity == random_world_encoder.identity
    assert enc.text_identity == random_world_encoder.text_identity + "+int8"
    got, want = enc.encode_texts(TEXTS), random_world_encoder.encode_texts(TEXTS)
    assert cosines(got, want).min() > 0.98 and not np.allclose(got, want, atol=1e-5)
    stamp = enc.text_path.path.stat().st_mtime_ns
    again = WorldEncoder(random_world_encoder_dir, text_tower, runtime="onnx",
                         onnx_folder=tmp_path, quantize="int8")
    assert again.text_path.path.stat().st_mtime_ns == stamp  # loaded, not made again
    enc.text_path.path.write_bytes(b"half a graph")
    redone = WorldEncoder(random_world_encoder_dir, text_tower, runtime="onnx",
                          onnx_folder=tmp_path, quantize="int8")
    assert redone.runtime == "onnx int8" and np.allclose(redone.encode_texts(TEXTS), got)


def test_an_int8_graph_that_cannot_be_had_leaves_the_float_graph_with_a_warning(
        random_world_encoder_dir, random_world_encoder, text_tower, tmp_path, monkeypatch):
    def broken(source, target):
        raise RuntimeError("no quantizer here")

    monkeypatch.setattr(onnx_graph, "quantize_int8", broken)
    with pytest.warns(UserWarning, match="could not quantize world-text.*no quantizer"):
        enc = WorldEncoder(random_world_encoder_dir, text_tower, runtime="onnx",
                           onnx_folder=tmp_path, quantize="int8")
    assert enc.runtime == "onnx" and enc.text_identity == random_world_encoder.text_identity
    assert np.allclose(enc.encode_texts(TEXTS), random_world_encoder.encode_texts(TEXTS),
                       atol=1e-5)


def test_the_world_profile_quantizes_the_encoders_text_side_only(onnx_folder):
    """int8 where it pays and was measured (the encoder's own text side); the layers the
    generator reads stay float, and a profile may ask for float everywhere."""
    from engine.factory import load_models
    from engine.profile import load_profile

    models = load_models(load_profile("world"))
    assert (models.encoder.runtime, models.text_tower.runtime) == ("onnx int8", "onnx")
    with pytest.raises(ValueError, match="quantize must be one of none, int8"):
        load_profile("world", ["encoder.quantize=int4"])
    with pytest.raises(ValueError, match="quantize is for the world encoder"):
        load_profile("clip-sdturbo", ["encoder.quantize=int8"])
