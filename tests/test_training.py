"""Both trainers run end to end on a tiny corpus and make progress."""

import numpy as np
import pytest

from generation.train_world import GeneratorTrainConfig, train_generator
from generation.world_unet import TINY
from retrieval.train_encoder import EncoderTrainConfig, recall_at, train_encoder
from retrieval.world_encoder import WorldEncoderConfig
from world.corpus import build_corpus


@pytest.fixture(scope="module")
def tiny_corpus(text_tower):
    return build_corpus(24, "train", text_tower, image_size=64)


def test_corpus_packs_states_per_text(tiny_corpus):
    c = tiny_corpus
    assert c.images.shape == (24, 3, 64, 64) and len(c.texts) == 48
    assert (c.text_kind == 0).sum() == 24  # one full caption per scene
    states, mask = c.batch_states(c.offsets.new_tensor([0, 5]))
    assert states.shape[0] == 2 and mask.sum(1).tolist() == [
        int(c.offsets[1] - c.offsets[0]), int(c.offsets[6] - c.offsets[5])]


def test_generator_training_lowers_the_loss(tiny_corpus, text_tower):
    empty = text_tower([""])[0]
    cfg = GeneratorTrainConfig(steps=40, batch_size=8, lr=2e-3, warmup=5, log_every=1)
    _, log = train_generator(tiny_corpus, empty, TINY, cfg)
    losses = [e["loss"] for e in log]
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:4])


def test_encoder_training_lowers_the_loss_and_learns_to_retrieve(tiny_corpus):
    cfg = EncoderTrainConfig(steps=40, batch_size=16, lr=2e-3, warmup=5, log_every=1)
    model, log = train_encoder(tiny_corpus, WorldEncoderConfig(), cfg)
    losses = [e["loss"] for e in log]
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:4])
    assert recall_at(model, tiny_corpus)["R@5"] > 5 / 24  # better than chance on its own data
