"""Both trainers run end to end on a tiny corpus, make progress, and resume exactly."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from generation.train_world import (
    GeneratorTrainConfig,
    LayoutTrainConfig,
    corpus_labels,
    layout_accuracy,
    train_generator,
    train_layout,
)
from generation.world_layout import WorldLayoutParser
from generation.world_unet import TINY, WorldUNetConfig
from retrieval.train_encoder import (
    EncoderTrainConfig,
    corpus_text_loss,
    encoder_batches,
    finetune_image_tower,
    finetune_text_head,
    recall_at,
    reproduce,
    train_encoder,
)
from retrieval.world_encoder import (
    TextHead,
    WorldDualEncoder,
    WorldEncoderConfig,
    with_tower_layers,
)
from world.clause_corpus import build_clause_corpus
from world.corpus import (
    Corpus,
    build_corpus,
    build_embedded_corpus,
    cached_corpus,
    cached_embedded_corpus,
    render_split,
    scene_texts,
)
from world.render import RENDER_VERSION


def full_caption_of(seed: int) -> str:
    return dict(scene_texts(seed))[0]


# Smaller than the shipped models so a test step costs milliseconds; same code paths.
SMALL_ENCODER = WorldEncoderConfig(embed_dim=64, widths=(8, 16, 32, 32))
MICRO_UNET = WorldUNetConfig(sample_size=16, block_out_channels=(8, 16), norm_num_groups=4,
                             attention_head_dim=4, cross_attention_dim=32)


@pytest.fixture(scope="module")
def tiny_corpus(text_tower):
    return build_corpus(24, "train", text_tower, image_size=64)


@pytest.fixture(scope="module")
def clause_corpus(text_tower):
    return build_clause_corpus(24, "train", text_tower, image_size=16)


@pytest.fixture(scope="module")
def parser():
    torch.manual_seed(0)
    return WorldLayoutParser(width=32, heads=2).eval()


def test_clause_corpus_reads_each_distinct_clause_once(clause_corpus):
    c = clause_corpus
    assert c.images.shape == (24, 3, 16, 16) and len(c.texts) == 24 * 6
    n_clauses = len(c.clause_offsets) - 1
    assert n_clauses == len(set(c.text_clauses.tolist())) < len(c.text_clauses)  # shared
    # A text's clauses, concatenated, are what the pipeline reads for that text.
    from dialog.query import split_clauses
    assert len(c.clauses_of(5)) == len(split_clauses(c.texts[5]))


def test_corpus_packs_states_per_text(tiny_corpus):
    c = tiny_corpus
    assert c.images.shape == (24, 3, 64, 64) and len(c.texts) == 7 * 24
    # one full caption, two free descriptions and three in varied wording per scene
    for kind, per_scene in ((0, 1), (3, 1), (4, 1), (5, 2), (6, 1)):
        assert (c.text_kind == kind).sum() == 24 * per_scene
    states, mask = c.batch_states(c.offsets.new_tensor([0, 5]))
    assert states.shape[0] == 2 and mask.sum(1).tolist() == [
        int(c.offsets[1] - c.offsets[0]), int(c.offsets[6] - c.offsets[5])]


def test_layout_parser_learns_the_background_from_the_text(clause_corpus):
    cfg = LayoutTrainConfig(steps=60, batch_size=32, lr=3e-3, warmup=5, log_every=1)
    model, log = train_layout(clause_corpus, cfg, width=32)
    losses = [e["loss"] for e in log]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    acc = layout_accuracy(model, clause_corpus, corpus_labels(clause_corpus))
    assert acc["background"] > 0.3  # chance: 1/12


def test_generator_training_lowers_the_loss(clause_corpus, parser):
    cfg = GeneratorTrainConfig(steps=16, batch_size=4, lr=2e-3, warmup=3, log_every=1)
    unet, log = train_generator(clause_corpus, parser, TINY, cfg)
    losses = [e["loss"] for e in log]
    assert len(losses) == 16 and not unet.training
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])


def test_encoder_training_lowers_the_loss_and_learns_to_retrieve(tiny_corpus):
    cfg = EncoderTrainConfig(steps=24, batch_size=16, lr=2e-3, warmup=3, log_every=1)
    model, log = train_encoder(tiny_corpus, SMALL_ENCODER, cfg)
    losses = [e["loss"] for e in log]
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])
    assert recall_at(model, tiny_corpus)["R@5"] > 5 / 24  # better than chance on its own data


def test_an_image_tower_fine_tune_leaves_the_text_side_as_it_was(tiny_corpus):
    torch.manual_seed(0)
    model = WorldDualEncoder(SMALL_ENCODER)  # the image tower learns the frozen text side
    text_before = {k: v.clone() for k, v in model.text.state_dict().items()}
    image_before = {k: v.clone() for k, v in model.image.state_dict().items()}
    cfg = EncoderTrainConfig(steps=24, batch_size=16, lr=2e-3, warmup=3, log_every=1)
    log = finetune_image_tower(model, tiny_corpus, cfg)
    # Well under chance, log(batch): the temperature alone cannot get there.
    assert np.mean([e["loss"] for e in log[-4:]]) < 0.7 * np.log(cfg.batch_size)
    for k, v in model.text.state_dict().items():  # every query embedding stays the same
        assert torch.equal(v, text_before[k]), k
    assert any(not torch.equal(v, image_before[k]) for k, v in model.image.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())  # handed back trainable


@pytest.mark.parametrize("tower_lr_scale", [0.0, 0.2])
def test_a_text_fine_tune_trains_copied_tower_layers_at_their_own_rate(tower_lr_scale,
                                                                       text_tower):
    """A head that owns the tower's top layer learns from states below it; those layers train
    at `tower_lr_scale` x lr (0: not at all, while the rest of the head does) and the image
    tower stays as it was."""
    corpus = build_corpus(24, "train", text_tower, image_size=64, layer=-2)
    first = corpus.texts[0]
    # The states of the layer below the top one (fp16, and batched with other texts).
    assert torch.allclose(corpus.batch_states(torch.tensor([0]))[0][0],
                          text_tower([first], -2)[0][0], atol=2e-2)
    assert not torch.allclose(corpus.batch_states(torch.tensor([0]))[0][0],
                              text_tower([first])[0][0], atol=2e-2)
    torch.manual_seed(0)
    model = with_tower_layers(WorldDualEncoder(SMALL_ENCODER), text_tower.top_layers(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = EncoderTrainConfig(steps=12, batch_size=16, lr=2e-3, warmup=2, log_every=1,
                             tower_lr_scale=tower_lr_scale)
    log = finetune_text_head(model, corpus, cfg)
    assert np.mean([e["loss"] for e in log[-3:]]) < np.mean([e["loss"] for e in log[:3]])
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert not any(k.startswith("image.") for k in moved)
    assert any(k.startswith("text.layer.") for k in moved)
    tower_moved = any(k.startswith("text.tower_top.") for k in moved)
    assert tower_moved == (tower_lr_scale > 0)


def test_a_head_with_tower_layers_is_grown_but_never_shrunk(text_tower, tmp_path):
    """`--text-layers` under the count an --init head owns is refused before any corpus is
    built; more grows it (`with_tower_layers`, tests/test_encoders.py)."""
    model = with_tower_layers(WorldDualEncoder(SMALL_ENCODER), text_tower.top_layers(2))
    model.save_pretrained(tmp_path / "two")
    with pytest.raises(ValueError, match="give --text-layers 2 or more"):
        reproduce(tmp_path / "out", 24, 1, tmp_path, init=tmp_path / "two", text_layers=1)
    assert not list(tmp_path.glob("corpus-*"))


def test_corpus_negatives_rank_each_text_against_every_training_image(tiny_corpus):
    torch.manual_seed(0)
    model = WorldDualEncoder(SMALL_ENCODER).eval()
    with torch.no_grad():
        images = model.encode_image(tiny_corpus.images)
    scale = model.logit_scale.exp()

    def losses(batch_size):
        batch = encoder_batches(tiny_corpus, EncoderTrainConfig(batch_size=batch_size),
                                image_embeddings=images)(torch.Generator().manual_seed(1))
        with torch.no_grad():
            texts = model.encode_text(batch["states"], batch["mask"])
            in_batch = F.cross_entropy(scale * texts @ batch["image_embeddings"].T,
                                       torch.arange(len(texts)))
            return corpus_text_loss(images)(model, batch), in_batch

    # A batch of every scene: the batch's text->image loss is the corpus loss.
    whole, in_batch = losses(len(tiny_corpus.images))
    assert torch.allclose(whole, in_batch)
    # A batch of a third: every other scene is a negative too, so the loss is higher.
    part, in_batch = losses(8)
    assert part > in_batch


def test_a_text_fine_tune_against_the_whole_corpus_learns_and_keeps_the_images(
        tiny_corpus, tmp_path, monkeypatch):
    import retrieval.train_encoder as train_module

    losses = []  # what each step's loss was computed against: every corpus image

    def spying(image_embeddings):
        loss = corpus_text_loss(image_embeddings)
        return lambda model, batch: losses.append(len(image_embeddings)) or loss(model, batch)

    monkeypatch.setattr(train_module, "corpus_text_loss", spying)
    # A trained image tower (random ones embed all 24 scenes nearly alike) under a new head.
    model, _ = train_encoder(tiny_corpus, SMALL_ENCODER,
                             EncoderTrainConfig(steps=24, batch_size=16, lr=2e-3, warmup=3))
    torch.manual_seed(0)
    model.text = TextHead(SMALL_ENCODER)
    image_before = {k: v.clone() for k, v in model.image.state_dict().items()}
    before = recall_at(model, tiny_corpus)["R@5"]
    cfg = EncoderTrainConfig(steps=24, batch_size=8, lr=2e-3, warmup=3, negatives="corpus")
    finetune_text_head(model, tiny_corpus, cfg)
    assert losses == [len(tiny_corpus.images)] * cfg.steps
    after = recall_at(model, tiny_corpus)["R@5"]
    assert after > 5 / 24 and after > before  # better than chance, and than the new head
    for k, v in model.image.state_dict().items():
        assert torch.equal(v, image_before[k]), k
    with pytest.raises(ValueError, match="negatives must be"):
        EncoderTrainConfig(negatives="hard")
    with pytest.raises(ValueError, match="for text-side fine-tunes"):  # the images move there
        finetune_image_tower(model, tiny_corpus, cfg)
    with pytest.raises(ValueError, match="for text-side fine-tunes"):
        train_encoder(tiny_corpus, SMALL_ENCODER, cfg)
    with pytest.raises(ValueError, match="--init FOLDER --part text"):  # before any corpus
        reproduce(tmp_path / "out", 24, 1, tmp_path, negatives="corpus")


def test_a_corpus_from_an_older_renderer_is_redrawn_not_re_encoded(tiny_corpus, tmp_path):
    stale = Corpus(**{**tiny_corpus.__dict__, "images": torch.zeros_like(tiny_corpus.images)})
    stale.save(tmp_path / "corpus-v7-train-24-64px.pt")  # render 1's name had no suffix
    corpus = cached_corpus(24, "train", None, 64, tmp_path)  # no text tower: states are kept
    assert torch.equal(corpus.images, render_split(24, "train", 64)[1])
    assert torch.equal(corpus.states, tiny_corpus.states) and corpus.texts == tiny_corpus.texts
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"corpus-v7-train-24-64px-r{RENDER_VERSION}.pt", "corpus-v7-train-24-64px.pt"]


class Interrupted(Exception):
    """Stands in for a crash, Ctrl-C or a lost machine in the middle of a run."""


def crash_after(step: int):
    def evaluate(model, at: int):
        if at > step:
            raise Interrupted
    return evaluate


@pytest.mark.parametrize("trainer", ["generator (EMA, clipping)", "encoder (dropout)"])
def test_an_interrupted_run_resumes_as_if_never_stopped(trainer, tiny_corpus, clause_corpus,
                                                        parser, tmp_path):
    """Train 3 of 6 steps and crash; resume to 6; the result is the uninterrupted 6-step run."""
    if trainer.startswith("generator"):
        cfg = GeneratorTrainConfig(steps=6, batch_size=4, warmup=2, log_every=1, eval_every=1,
                                   checkpoint_every=3)

        def run(out, **kw):
            return train_generator(clause_corpus, parser, MICRO_UNET, cfg, out, **kw)
    else:
        cfg = EncoderTrainConfig(steps=6, batch_size=8, warmup=2, log_every=1, eval_every=1,
                                 checkpoint_every=3)

        def run(out, **kw):
            return train_encoder(tiny_corpus, SMALL_ENCODER, cfg, out, **kw)

    straight, straight_log = run(tmp_path / "straight")
    with pytest.raises(Interrupted):
        run(tmp_path / "cut", evaluate=crash_after(3))
    assert [p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()] == ["step-000003"]
    with pytest.raises(ValueError, match="add --resume to continue"):  # never silently lost
        run(tmp_path / "cut")
    resumed, resumed_log = run(tmp_path / "cut", resume=True)

    def same(log):
        return [(e["step"], e["loss"], e["lr"]) for e in log]

    assert same(resumed_log) == same(straight_log) and len(resumed_log) == 6
    on_disk = (tmp_path / "cut" / "train.log.jsonl").read_text().splitlines()
    assert len(on_disk) == 6  # steps 1-3 from the first session, 4-6 from the second
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


class CountingEncoder:
    """A real encoder whose text calls are counted (to tell a cache read from a build)."""

    def __init__(self, encoder):
        self.encoder, self.calls = encoder, 0
        self.text_identity, self.text_tower = encoder.text_identity, encoder.text_tower

    def encode_texts(self, texts):
        self.calls += 1
        return self.encoder.encode_texts(texts)


def test_an_embedded_corpus_keeps_each_scene_s_caption_and_embeds_every_text_in_place(
        random_world_encoder, image_tuned_world_encoder, tmp_path):
    enc = CountingEncoder(random_world_encoder)
    corpus = cached_embedded_corpus(6, "train", enc, 64, tmp_path, texts_per_scene=3)
    seeds, images = render_split(6, "train", 64)
    assert torch.equal(corpus.images, images)
    assert corpus.text_scene.tolist() == [s for s in range(6) for _ in range(3)]
    assert corpus.texts[::3] == [full_caption_of(seed) for seed in seeds]
    assert len(set(corpus.texts)) == len(corpus.texts)  # three different texts per scene
    assert corpus.text_identity == enc.text_identity
    # Embedded in chunks of similar length, yet each row is its own text's embedding.
    expected = random_world_encoder.encode_texts(corpus.texts)
    np.testing.assert_allclose(corpus.text_embeddings.numpy(), expected, atol=1e-5)
    chunked = build_embedded_corpus(6, "train", random_world_encoder.encode_texts, "x",
                                    random_world_encoder.text_tower.tokenizer.get_vocab(),
                                    texts_per_scene=3, chunk=4)
    np.testing.assert_allclose(chunked.text_embeddings.numpy(), expected, atol=1e-5)
    # Read again from the cache, also by an encoder with the same text side; one whose text
    # side differs embeds its own.
    calls = enc.calls
    same_text = CountingEncoder(image_tuned_world_encoder)
    for again in (enc, same_text):
        assert cached_embedded_corpus(6, "train", again, 64, tmp_path, 3).texts == corpus.texts
    assert enc.calls == calls and same_text.calls == 0
    other = CountingEncoder(random_world_encoder)
    other.text_identity += "+int8"
    cached_embedded_corpus(6, "train", other, 64, tmp_path, 3)
    assert other.calls > 0 and len(list(tmp_path.glob("embedded-*"))) == 2
    with pytest.raises(ValueError, match="texts per scene must be 1..7"):
        cached_embedded_corpus(6, "train", enc, 64, tmp_path, texts_per_scene=8)


def test_an_image_tower_learns_an_embedded_corpus_s_frozen_texts(random_world_encoder_dir,
                                                                  random_world_encoder,
                                                                  tmp_path):
    corpus = build_embedded_corpus(24, "train", random_world_encoder.encode_texts,
                                   random_world_encoder.text_identity,
                                   random_world_encoder.text_tower.tokenizer.get_vocab(),
                                   texts_per_scene=2)
    model = WorldDualEncoder.from_pretrained(random_world_encoder_dir)
    text_before = {k: v.clone() for k, v in model.text.state_dict().items()}
    cfg = EncoderTrainConfig(steps=24, batch_size=16, lr=2e-3, warmup=3, log_every=1)
    log = finetune_image_tower(model, corpus, cfg)
    assert np.mean([e["loss"] for e in log[-4:]]) < 0.7 * np.log(cfg.batch_size)
    for k, v in model.text.state_dict().items():
        assert torch.equal(v, text_before[k]), k
    # Texts another text side embedded are refused: the tower would learn the wrong targets.
    with torch.no_grad():
        model.text.proj.bias.add_(0.1)
    with pytest.raises(ValueError, match="not by this model's text side"):
        finetune_image_tower(model, corpus, cfg)
    for bad in ({"texts_per_scene": 2}, {"part": "image", "texts_per_scene": 0}):
        with pytest.raises(ValueError, match="give it with --part image|must be 1..7"):
            reproduce(tmp_path / "out", 24, 1, tmp_path, init=random_world_encoder_dir, **bad)
    assert not list(tmp_path.glob("*.pt"))  # refused before any corpus was built


def test_train_encoder_part_image_writes_a_model_whose_text_side_is_unchanged(
        random_world_encoder_dir, onnx_folder, tmp_path):
    out = tmp_path / "out"
    reproduce(out, 12, 2, tmp_path / "cache", batch_size=4, val_scenes=8,
              init=random_world_encoder_dir, part="image", texts_per_scene=2,
              onnx_folder=onnx_folder)
    before = WorldDualEncoder.from_pretrained(random_world_encoder_dir)
    after = WorldDualEncoder.from_pretrained(out)
    for k, v in before.text.state_dict().items():
        assert torch.equal(v, after.text.state_dict()[k]), k
    card = (out / "README.md").read_text()
    assert "--part image --texts-per-scene 2" in card
    assert "its onnx int8 path" in card and "its full caption and 1 more" in card
    assert len(list((tmp_path / "cache").glob("embedded-*-12-64px-2texts-*.pt"))) == 1
