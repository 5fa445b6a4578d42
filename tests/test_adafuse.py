"""ADaFuSE: the head's contract, its checkpoint, its training, and the ChatIR metrics."""

import math

import numpy as np
import pytest
import torch

from evaluation.metrics import bri, cumulative_hits, degradation
from evaluation.train_fusion import chatir_validation
from fusion import ADaFuSE, ADaFuSEConfig, FusionMismatchError, load_fusion
from fusion.adafuse import BUDGET, parameter_count
from fusion.adafuse_head import ADaFuSEHead
from fusion.train_adafuse import FusionTrainConfig, fusion_batches, fusion_loss, train_adafuse


def unit(*shape, seed=0):
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def small_head(seed=0, encoder="enc@1", dim=16):
    torch.manual_seed(seed)
    return ADaFuSEHead(ADaFuSEConfig(dim=dim, proj=16, hidden=32, experts=4, encoder=encoder))


def test_gate_in_unit_interval_expert_weights_sum_to_one_and_query_unit_norm():
    fused = small_head().fusion()(unit(5, 16), unit(5, 16, seed=1), np.arange(5))
    lam, experts = fused.decision["lambda"], fused.decision["experts"]
    assert lam.shape == (5,) and ((lam > 0) & (lam < 1)).all()
    assert experts.shape == (5, 4) and np.allclose(experts.sum(1), 1, atol=1e-6)
    assert np.allclose(np.linalg.norm(fused.query, axis=1), 1, atol=1e-5)
    row = fused.row(0)
    assert set(row) == {"lambda", "experts"} and len(row["experts"]) == 4


def test_gradients_reach_only_the_fusion_head():
    encoder = torch.nn.Linear(8, 16)  # stands in for a frozen encoder
    encoder.requires_grad_(False)
    head = small_head()
    x = torch.randn(6, 8)
    t, g = encoder(x), encoder(x.flip(0))
    loss = fusion_loss(head, {"t": t, "g": g, "x": torch.nn.functional.normalize(t, dim=-1)})
    loss.backward()
    assert all(p.grad is None for p in encoder.parameters())
    assert all(p.grad is not None for p in head.parameters())


def test_sizes_follow_the_encoder_and_stay_within_budget():
    world = ADaFuSEConfig.for_encoder(256, 24_500_000)  # MiniLM + world towers
    assert (world.proj, world.hidden) == (256, 512)
    assert parameter_count(world) <= BUDGET * 24_500_000
    blip = ADaFuSEConfig.for_encoder(256, 224_000_000)  # the paper's sizes for BLIP
    assert (blip.proj, blip.hidden) == (512, 2048)
    head = ADaFuSEHead(world)
    assert sum(p.numel() for p in head.parameters()) == parameter_count(world)


@pytest.mark.parametrize("gate_bias", [None, 2.0])
def test_the_apps_numpy_forward_is_the_trained_torch_heads(gate_bias):
    torch.manual_seed(3)
    head = ADaFuSEHead(ADaFuSEConfig(dim=32, proj=24, hidden=48, experts=3,
                                     gate_bias=gate_bias)).eval()
    for p in head.parameters():  # larger weights than the init's, so every GELU bends
        p.data.mul_(3)
    t, g = unit(64, 32, seed=1), unit(64, 32, seed=2)
    with torch.no_grad():
        q, lam, weights = head(torch.from_numpy(t), torch.from_numpy(g))
    fused = head.fusion()(t, g, np.arange(64) % 11)
    assert np.abs(fused.query - q.numpy()).max() < 2e-6
    assert np.abs(fused.decision["lambda"] - lam.numpy()).max() < 2e-6
    assert np.abs(fused.decision["experts"] - weights.numpy()).max() < 2e-6
    # and back: the module rebuilt from the app's weights is the same head
    again = ADaFuSEHead.from_fusion(head.fusion()).eval()
    assert again.cfg == head.cfg
    with torch.no_grad():
        assert torch.equal(again(torch.from_numpy(t), torch.from_numpy(g))[0], q)


def test_the_apps_fusion_holds_its_own_weights_and_a_saturated_gate_is_quiet():
    import warnings

    head = small_head().eval()
    fusion = head.fusion()
    t, g = unit(4, 16, seed=1), unit(4, 16, seed=2)
    before = fusion(t, g, np.arange(4)).query
    with torch.no_grad():  # training goes on after the copy was taken
        head.gate[-1].bias.fill_(-200.0)
        head.out[0].bias.fill_(5.0)
    assert np.array_equal(fusion(t, g, np.arange(4)).query, before)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning from the sigmoid
        lam = head.fusion()(t, g, np.arange(4)).decision["lambda"]
    assert (lam < 1e-30).all()


def test_gelu_is_exact_gelu_to_float32_rounding():
    from fusion.adafuse import gelu

    x = np.linspace(-12, 12, 200_001, dtype=np.float32)
    # The float64 truth, not torch: torch's own float32 GELU differs from it by up to 1.1e-6
    # on an AVX-512 host (and agreed to 1e-6 on AVX2 ones).
    truth = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.tolist()])
    # the erf approximation's 1.5e-7 (half of it in Phi) grows with |x|, as does rounding
    assert (np.abs(gelu(x) - truth) / np.maximum(np.abs(x), 1)).max() < 3e-7
    torch_gelu = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    assert np.abs(gelu(x) - torch_gelu).max() < 1e-5  # the same function torch's head used


def test_checkpoint_round_trips_and_refuses_another_encoder(tmp_path):
    fusion = small_head().fusion()
    fusion.save_pretrained(tmp_path / "ckpt")
    loaded = load_fusion(tmp_path / "ckpt")
    assert isinstance(loaded, ADaFuSE) and loaded.cfg == fusion.cfg
    t, g = unit(3, 16), unit(3, 16, seed=1)
    assert np.allclose(loaded(t, g, [0, 1, 2]).query, fusion(t, g, [0, 1, 2]).query)
    loaded.check_encoder("enc@1", 16)
    with pytest.raises(FusionMismatchError, match="trained on the embeddings of 'enc@1'"):
        loaded.check_encoder("enc@2", 16)
    with pytest.raises(FusionMismatchError, match="16-d"):
        loaded.check_encoder("enc@1", 32)
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_fusion(tmp_path / "ckpt")


def synthetic_dialogs(n=96, rounds=4, dim=16, seed=0):
    """Targets x; text t = x + noise that shrinks with the round; the pseudo-image g = x +
    independent noise: fusing both beats either alone."""
    from evaluation.dialog_set import DialogEmbeddings

    rng = np.random.default_rng(seed)
    x = unit(n, dim, seed=seed)
    noise = lambda s: rng.normal(size=(n, rounds, dim)) * s  # noqa: E731
    t = x[:, None] + noise(np.linspace(1.2, 0.4, rounds)[None, :, None])
    g = x[:, None] + noise(0.8)
    t /= np.linalg.norm(t, axis=-1, keepdims=True)
    g /= np.linalg.norm(g, axis=-1, keepdims=True)
    return DialogEmbeddings(t.astype(np.float32), g[:, :, None].astype(np.float16), x,
                            np.arange(n))


def test_a_few_training_steps_lower_the_loss_and_keep_the_best_validation_weights():
    train_emb, val_emb = synthetic_dialogs(seed=0), synthetic_dialogs(seed=1)
    cfg = FusionTrainConfig(steps=60, batch_size=32, lr=3e-3, warmup=5, eval_every=20,
                            log_every=10, ema_decay=None)
    model_cfg = ADaFuSEConfig(dim=16, proj=16, hidden=32)
    arrays = train_emb.text, train_emb.pseudo(1), train_emb.corpus[train_emb.targets]
    fixed = fusion_batches(*arrays, 32)(torch.Generator().manual_seed(123))
    torch.manual_seed(0)
    before = fusion_loss(ADaFuSEHead(model_cfg).eval(), fixed).item()
    fusion, log, best = train_adafuse(*arrays, model_cfg, cfg, chatir_validation(val_emb))
    after = fusion_loss(ADaFuSEHead.from_fusion(fusion).eval(), fixed).item()
    assert after < before - 0.3
    scores = {e["step"]: e["val_score"] for e in log if "val_score" in e}
    assert set(scores) == {20, 40, 60} and scores[best["step"]] == max(scores.values())
    # the weights kept are those of the best validation, not the last step's
    assert chatir_validation(val_emb)(fusion)[0] == pytest.approx(best["score"], abs=1e-3)


def test_cumulative_hits_bri_and_degradation_by_hand():
    # 0-based ranks of 3 dialogs over 3 rounds; dialog 2 is never found in the top 10.
    ranks = np.array([[3, 0, 5],
                      [12, 9, 0],
                      [50, 40, 45]])
    assert cumulative_hits(ranks, 1).tolist() == pytest.approx([0, 100 / 3, 200 / 3])
    assert cumulative_hits(ranks, 10).tolist() == pytest.approx([100 / 3, 200 / 3, 200 / 3])
    # best 1-based ranks so far: [4, 1, 1], [13, 10, 1], [51, 41, 41]
    best = np.log1p(np.array([[4, 1, 1], [13, 10, 1], [51, 41, 41]]))
    assert bri(ranks) == pytest.approx(((best[:, :-1] + best[:, 1:]) / 2).mean())
    text = np.array([[3, 1, 5], [12, 9, 1], [50, 39, 45]])
    # worse than text: round 0 none (ties do not count), round 1 dialog 2, round 2 none
    assert degradation(ranks, text).tolist() == pytest.approx([0, 100 / 3, 0])


def test_auto_fusion_finds_the_checkpoint_trained_for_the_encoder(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from engine.factory import auto_fusion
    from fusion import TextOnly

    monkeypatch.setenv("ITIR_HOME", str(tmp_path))
    small_head(encoder="enc@other").fusion().save_pretrained(tmp_path / "fusions" / "a")
    (tmp_path / "fusions" / "broken").mkdir()
    (tmp_path / "fusions" / "broken" / "fusion_config.json").write_text("{oops")
    assert isinstance(auto_fusion(SimpleNamespace(identity="enc@1", dim=16)), TextOnly)
    small_head(encoder="enc@1").fusion().save_pretrained(tmp_path / "fusions" / "b")
    found = auto_fusion(SimpleNamespace(identity="enc@1", dim=16))
    assert isinstance(found, ADaFuSE) and found.cfg.encoder == "enc@1"


def test_the_shipped_world_checkpoint_is_what_the_world_profile_fuses_with(tmp_path,
                                                                          monkeypatch):
    """assets/world-adafuse was trained for the shipped world encoder: `fusion = "auto"`
    picks it (no checkpoint of the user's own in ITIR_HOME), within the parameter budget."""
    from engine.factory import auto_fusion, load_models
    from engine.profile import load_profile

    monkeypatch.setenv("ITIR_HOME", str(tmp_path))
    profile = load_profile("world")
    encoder = load_models(profile, with_generator=False).encoder
    fusion = auto_fusion(encoder, profile.fusion_fallback)
    assert isinstance(fusion, ADaFuSE) and fusion.cfg.encoder == encoder.identity
    assert parameter_count(fusion.cfg) <= BUDGET * encoder.num_parameters
    t, g = unit(3, encoder.dim, seed=1), unit(3, encoder.dim, seed=2)
    fused = fusion(t, g, np.array([0, 5, 10]))
    assert np.allclose(np.linalg.norm(fused.query, axis=1), 1, atol=1e-5)


def test_the_text_hinge_is_zero_where_fusing_costs_nothing_and_leaves_the_temperature_alone():
    torch.manual_seed(0)
    t, x = torch.from_numpy(unit(8, 16)), torch.from_numpy(unit(8, 16, seed=1))
    batch = {"t": t, "g": torch.from_numpy(unit(8, 16, seed=2)), "x": x}

    class Echo(torch.nn.Module):  # a "fusion" that returns its text input: q = t
        logit_scale = torch.nn.Parameter(torch.tensor(3.0))

        def forward(self, t, g):
            return t, None, None

    echo = Echo()
    assert fusion_loss(echo, batch, 10.0).item() == pytest.approx(fusion_loss(echo, batch).item())

    def scale_grad(text_hinge):
        head = small_head()
        head.zero_grad()
        fusion_loss(head, batch, text_hinge).backward()
        return head.logit_scale.grad.clone(), head.text_proj[0].weight.grad.clone()

    (plain_scale, plain_w), (hinge_scale, hinge_w) = scale_grad(0.0), scale_grad(10.0)
    assert torch.allclose(plain_scale, hinge_scale)  # the temperature is InfoNCE's alone
    assert not torch.allclose(plain_w, hinge_w)  # while the hinge does shape the query


def test_the_corpus_hinge_charges_a_near_duplicate_that_the_batch_never_shows():
    """Over the batch a query pulled onto the target's near-duplicate looks harmless: the
    duplicate is not among the other targets. Over the training corpus it outranks the target,
    and the hinge charges it. With the batch's own targets as the corpus both agree."""
    x = torch.from_numpy(unit(8, 16))
    twin = torch.nn.functional.normalize(x[0] + 0.3 * torch.from_numpy(unit(16, seed=5)), dim=0)
    q = x.clone()
    q[0] = twin  # the fused query of example 0 lands on the twin; the text query is exact

    class Fixed(torch.nn.Module):
        logit_scale = torch.nn.Parameter(torch.tensor(math.log(30.0)))

        def forward(self, t, g):
            return q, None, None

    batch = {"t": x, "g": x, "x": x, "target_id": torch.arange(1, 9)}
    corpus = torch.cat([twin[None], x])
    head = Fixed()
    plain = fusion_loss(head, batch).item()
    over_batch = fusion_loss(head, batch, 1.0).item() - plain
    over_corpus = fusion_loss(head, batch, 1.0, corpus).item() - plain
    assert over_batch < 0.01 and over_corpus > 0.1  # measured: 0.0 against 0.17
    assert fusion_loss(head, batch | {"target_id": torch.arange(8)}, 1.0, x).item() == (
        pytest.approx(fusion_loss(head, batch, 1.0).item()))


def test_the_text_hinge_makes_the_head_rank_targets_worse_than_text_less_often():
    """Half the pseudo-images show the target, half are unrelated. Under plain InfoNCE the
    gains on some examples pay for the losses on others; the hinge charges the losses alone,
    so the fused ranks fall below text-only's less often, and the gains mostly stay."""
    from evaluation.chatir import method_ranks
    from evaluation.dialog_set import DialogEmbeddings
    from fusion import TextOnly

    def half_unrelated(seed, n):
        emb = synthetic_dialogs(n=n, seed=seed)
        g = emb.image.copy()
        unrelated = np.random.default_rng(seed + 7).random(n) < 0.5
        g[unrelated] = unit(*g[unrelated].shape, seed=seed + 11)
        return DialogEmbeddings(emb.text, g, emb.corpus, emb.targets)

    train_emb = half_unrelated(0, 256)
    val_emb = half_unrelated(1, 128)
    test_emb = half_unrelated(2, 512)
    text_ranks, _ = method_ranks(test_emb, TextOnly())
    worse, better = {}, {}
    for hinge in (0.0, 10.0):
        cfg = FusionTrainConfig(steps=150, batch_size=64, lr=3e-3, warmup=10, eval_every=50,
                                log_every=50, ema_decay=None, text_hinge=hinge)
        fusion, _, _ = train_adafuse(
            train_emb.text, train_emb.pseudo(1), train_emb.corpus[train_emb.targets],
            ADaFuSEConfig(dim=16, proj=16, hidden=32), cfg, chatir_validation(val_emb))
        ranks, _ = method_ranks(test_emb, fusion)
        worse[hinge], better[hinge] = (ranks > text_ranks).mean(), (ranks < text_ranks).mean()
    assert worse[10.0] < worse[0.0] - 0.05  # measured: 0.34 against 0.43
    assert better[10.0] > worse[10.0] + 0.15  # the image still helps more often than not
    assert better[10.0] > better[0.0] - 0.08  # measured: 0.53 against 0.52


def test_bench_fusion_times_one_query_and_a_batch_and_counts_the_head():
    from types import SimpleNamespace

    from evaluation.bench import bench_fusion

    fusion = small_head().fusion()
    encoder = SimpleNamespace(dim=16, identity="enc@1", num_parameters=1_000_000)
    result = bench_fusion(fusion, encoder, calls=20, batch=4)
    assert result["batch_1"]["n"] == result["batch_4"]["n"] == 20
    assert 0 < result["batch_1"]["p50_ms"] < 1000
    assert result["fusion_parameters"] == parameter_count(fusion.cfg)
    assert result["fusion_share_percent"] == pytest.approx(
        100 * parameter_count(fusion.cfg) / 1_000_000, abs=0.01)


def test_paired_bootstrap_interval_of_a_hits_difference():
    from evaluation.metrics import hits_difference_ci

    rng = np.random.default_rng(0)
    text = rng.integers(0, 40, (200, 3))
    same = hits_difference_ci(text, text, 10)
    assert same.shape == (3, 2) and (same == 0).all()  # no difference, no uncertainty
    # Better by exactly 10% of dialogs at every round: the interval holds 10 and stays > 0.
    better = text.copy()
    missed = np.flatnonzero(np.minimum.accumulate(text, axis=1)[:, -1] >= 10)[:20]
    better[missed] = 0  # found from round 0 on
    ci = hits_difference_ci(better, text, 10)
    assert (ci[:, 0] > 0).all() and (ci[:, 0] <= 10).all() and (ci[:, 1] >= 10).all()
    assert np.array_equal(ci, hits_difference_ci(better, text, 10))  # seeded
