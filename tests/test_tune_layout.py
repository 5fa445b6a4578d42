"""Re-teaching a generator's layout parser new wording: the varied clause corpus, the slot
anchor that keeps what the UNet reads, and the command's pipeline folder."""

import random
import re
import shutil

import numpy as np
import pytest
import torch

from generation.train_world import corpus_labels, text_batch
from generation.tune_layout import TuneLayoutConfig, reproduce, slot_gap, tune_layout
from generation.world import WorldGenerator
from generation.world_layout import WorldLayoutParser
from world.clause_corpus import KINDS, TEMPLATE_KINDS, build_clause_corpus


@pytest.fixture(scope="module")
def varied_corpus(text_tower):
    return build_clause_corpus(16, "train", text_tower, image_size=16, varied=True)


def test_the_varied_corpus_is_the_generators_six_texts_plus_two_descriptions(varied_corpus,
                                                                            text_tower):
    plain = build_clause_corpus(16, "train", text_tower, image_size=16)
    c = varied_corpus
    old = c.text_kind < KINDS.index("varied")
    assert [t for t, keep in zip(c.texts, old.tolist()) if keep] == plain.texts
    assert torch.equal(c.text_kind[old], plain.text_kind)
    for kind in ("varied", "partial varied"):
        assert (c.text_kind == KINDS.index(kind)).sum() == 16
    assert set(c.texts) - set(plain.texts)  # the two are new texts
    counts = {kind: int((c.text_kind == KINDS.index(kind)).sum()) for kind in KINDS}
    for template in ("caption", "partial caption", "description", "partial description"):
        assert counts[template] == 16
    # each scene's two dialogs open with its template caption or, in about a third, freely
    assert counts["dialog"] + counts["dialog opened freely"] == 16
    assert counts["whole dialog"] == counts["dialog"] and 0 < counts["dialog opened freely"] < 16
    for row, kind in zip(c.text_scene.tolist(), c.text_kind.tolist()):
        if KINDS[kind].startswith(("dialog", "whole dialog")):  # the draw scene_texts makes
            free = random.Random(int(c.seeds[row]) * 17 + 3).random() < 1 / 3
            assert KINDS[kind].endswith("freely") == free
    assert TEMPLATE_KINDS == tuple(KINDS.index(k) for k in
                                   ("caption", "partial caption", "dialog", "whole dialog"))


def _loss_on(parser, corpus, kinds):
    ids = torch.isin(corpus.text_kind, torch.tensor(kinds)).nonzero().flatten()
    with torch.no_grad():
        return parser.eval()(*text_batch(corpus, ids)).loss(
            corpus_labels(corpus)[corpus.text_scene[ids]]).item()


def test_the_slot_anchor_keeps_what_the_unet_reads_while_the_parser_learns(varied_corpus):
    torch.manual_seed(0)
    source = WorldLayoutParser(width=32, heads=2).eval()
    weights = {k: v.clone() for k, v in source.state_dict().items()}
    varied = (KINDS.index("varied"), KINDS.index("partial varied"))
    before = _loss_on(source, varied_corpus, varied)
    gaps = {}
    for anchor in (0.0, 10.0):
        cfg = TuneLayoutConfig(steps=40, batch_size=32, lr=5e-3, warmup=3, log_every=1,
                               anchor=anchor, eval_every=1000)
        tuned, log = tune_layout(source, varied_corpus, cfg)
        assert _loss_on(tuned, varied_corpus, varied) < 0.85 * before  # it learns the words
        gaps[anchor] = slot_gap(tuned, source, varied_corpus)
        assert np.isfinite([e["loss"] for e in log]).all()
    assert gaps[10.0] < 0.5 * gaps[0.0]
    assert all(torch.equal(v, weights[k]) for k, v in source.state_dict().items())  # a copy


def test_tuning_refuses_a_corpus_without_text_kinds(varied_corpus):
    plain = type(varied_corpus)(**{**varied_corpus.__dict__, "text_kind": None})
    with pytest.raises(ValueError, match="no text kinds.*varied=True"):
        tune_layout(WorldLayoutParser(width=32, heads=2), plain, TuneLayoutConfig(steps=1))


def test_reproduce_writes_a_pipeline_with_only_the_parser_changed(tiny_world_pipeline,
                                                                  text_tower, tmp_path):
    pipe, shared = tiny_world_pipeline
    source = tmp_path / "source"
    shutil.copytree(shared, source)
    (source / "README.md").write_text("---\nlicense: mit\ntags:\n- itir\n---\n\n"
                                      "# tiny\n\nThe source's own words.\n")
    out = tmp_path / "tuned"
    log = reproduce(source, out, scenes=6, steps=3, cache_dir=tmp_path / "cache",
                    val_scenes=6)
    assert log[-1]["step"] == 3 and "slot_gap" in log[-1]
    tuned = WorldGenerator(out, text_tower, steps=2, guidance=3.0, runtime="torch")
    unet_before, unet_after = pipe.unet.state_dict(), tuned.pipe.unet.state_dict()
    assert all(torch.equal(v, unet_after[k]) for k, v in unet_before.items())
    layout_after = tuned.pipe.layout.state_dict()
    assert any(not torch.equal(v, layout_after[k]) for k, v in pipe.layout.state_dict().items())
    assert tuned.generate(["a red circle on a blue background"], seed=0)[0].size == (32, 32)
    card = (out / "README.md").read_text()
    assert not re.search(r"\{[a-z_]+\}", card)  # every fact filled in
    assert "layout-fine-tune" in card and "The source's own words." in card
    assert "--scenes 6 --steps 3 --lr 0.0003 --anchor 10.0" in card and "| caption | " in card
    assert not (out / "tune-layout" / "checkpoints").exists()
    with pytest.raises(ValueError, match="must differ from the source"):
        reproduce(out, out, scenes=6, steps=3, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="is not empty"):  # a fresh run never mixes folders
        reproduce(source, out, scenes=6, steps=3, cache_dir=tmp_path / "cache")
