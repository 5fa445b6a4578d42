"""Continual image domains: adapters, prototype routing, merging, and `itir domain`."""

import json

import numpy as np
import pytest
import torch

from itir.cli import main
from retrieval.adapters import AdapterConfig, DomainAdapter, RoutedImageTower
from retrieval.routing import Router, style_features
from retrieval.world_encoder import ImageTower, WorldEncoderConfig
from world.domains import DOMAINS, domain_scene, render_domain, write_domain


@pytest.fixture()
def tower():
    torch.manual_seed(0)
    return ImageTower(WorldEncoderConfig()).eval()


def trained_like(adapter: DomainAdapter, seed: int) -> DomainAdapter:
    """A fresh adapter is the identity (B = 0); give it random non-zero deltas."""
    gen = torch.Generator().manual_seed(seed)
    for delta in adapter.deltas.values():
        delta.up.weight.data = torch.randn(delta.up.weight.shape, generator=gen) * 0.05
    return adapter.eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 255


def test_routing_weights_sum_to_one_and_pick_the_matching_prototype():
    feats = {"a": torch.tensor([[0.0, 0.0], [0.2, -0.2]]), "b": torch.tensor([[4.0, 4.0]]),
             "c": torch.tensor([[-4.0, 4.0]])}
    router = Router.for_base("a", torch.tensor([[0.0, 0.0], [0.2, 0.1], [-0.2, -0.1]]),
                             temperature=0.5, keep=0.05)
    router.add("b", feats["b"])
    router.add("c", feats["c"])
    w = router.weights(torch.tensor([[0.1, 0.0], [3.9, 4.2], [-3.8, 4.1], [0.0, 5.0]]))
    assert torch.allclose(w.sum(1), torch.ones(4))
    assert w[:3].argmax(1).tolist() == [0, 1, 2]
    assert w[0, 0] == 1.0 and w[1, 1] == 1.0  # far prototypes are dropped, not just small
    assert w[3, 1] == pytest.approx(w[3, 2]) and w[3, 0] == 0  # between b and c: half each


def test_merging_two_identical_adapters_changes_nothing(tower):
    a = trained_like(DomainAdapter(AdapterConfig("a"), tower), seed=1)
    b = DomainAdapter(AdapterConfig("b"), tower)
    b.load_state_dict(a.state_dict())
    x = images(3)
    one = RoutedImageTower(tower, [a])(x, torch.ones(3, 1))
    both = RoutedImageTower(tower, [a, b])(x, torch.tensor([[0.5, 0.5], [0.3, 0.7], [1, 0]]))
    assert torch.allclose(one, both, atol=1e-6)
    assert not torch.allclose(one, torch.nn.functional.normalize(tower(x), dim=-1), atol=1e-3)


def test_batched_routing_equals_merging_the_weights_per_image(tower):
    adapters = [trained_like(DomainAdapter(AdapterConfig(n), tower), seed=i)
                for i, n in enumerate("abc")]
    routed = RoutedImageTower(tower, adapters).eval()
    x = images(4)
    w = torch.softmax(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), 1)
    batched = routed(x, w)  # each adapter's low-rank path, summed by each row's weights
    one_by_one = torch.cat([routed.merged(x[i:i + 1], w[i]) for i in range(4)])  # merged weights
    assert torch.allclose(batched, one_by_one, atol=1e-5)
    assert torch.equal(routed(x, torch.zeros(4, 3)),
                       torch.nn.functional.normalize(tower(x), dim=-1))


def test_adding_a_domain_leaves_images_routed_elsewhere_unchanged(tower):
    old = [trained_like(DomainAdapter(AdapterConfig(n), tower), seed=i)
           for i, n in enumerate(("sketch", "pixelated"))]
    new = trained_like(DomainAdapter(AdapterConfig("halftone"), tower), seed=9)
    render = {d: torch.from_numpy(np.stack([np.asarray(render_domain(domain_scene(d, "train", i),
                                                                     64)) for i in range(8)]))
              .permute(0, 3, 1, 2).float() for d in ("flat", "sketch", "pixelated", "halftone")}
    feats = {d: style_features(tower, x) for d, x in render.items()}
    router = Router.for_base("flat", feats["flat"], temperature=0.1)  # a random tower's
    router.add("sketch", feats["sketch"])
    router.add("pixelated", feats["pixelated"])
    x = torch.cat([render["flat"], render["sketch"], render["pixelated"]])
    w_before = router.weights(style_features(tower, x))
    before = RoutedImageTower(tower, old)(x, w_before[:, 1:])
    router.add("halftone", feats["halftone"])
    w_after = router.weights(style_features(tower, x))
    after = RoutedImageTower(tower, [*old, new])(x, w_after[:, 1:])
    untouched = w_after[:, 3] == 0
    assert untouched.sum() >= len(x) // 3  # the check below is not vacuous
    assert torch.equal(w_after[untouched, :3], w_before[untouched])
    assert torch.equal(after[untouched], before[untouched])


def test_an_adapter_round_trips_through_save_pretrained(tower, tmp_path):
    adapter = trained_like(DomainAdapter(AdapterConfig("sketch", rank=4), tower), seed=3)
    adapter.save_pretrained(tmp_path / "sketch")
    back = DomainAdapter.load(tmp_path / "sketch", tower)
    assert back.config == adapter.config
    x = images(2)
    assert torch.equal(RoutedImageTower(tower, [adapter])(x, torch.ones(2, 1)),
                       RoutedImageTower(tower, [back])(x, torch.ones(2, 1)))
    assert sum(p.numel() for p in adapter.parameters()) < 0.05 * sum(
        p.numel() for p in tower.parameters())


def test_domains_look_different_and_keep_disjoint_seeds():
    from itir.cli import DOMAIN_NAMES

    assert DOMAIN_NAMES == DOMAINS  # the CLI's list, kept import-free for a fast --help
    seeds = {(d, s): domain_scene(d, s, 0).seed for d in DOMAINS for s in ("train", "test")}
    assert len(set(seeds.values())) == len(seeds)
    from dataclasses import replace
    scene = next(s for i in range(50) if len((s := domain_scene("flat", "train", i)).objects) == 4)
    pics = [np.asarray(render_domain(replace(scene, style=d), 64), np.float32) for d in DOMAINS]
    for i in range(len(pics)):
        for j in range(i + 1, len(pics)):
            assert np.abs(pics[i] - pics[j]).mean() > 1, (DOMAINS[i], DOMAINS[j])


@pytest.fixture()
def domain_world(tmp_path, random_world_encoder_dir, gallery_of):
    """A profile on a 12-image gallery (6 flat, 6 sketch) with its index built."""
    gallery = gallery_of(tmp_path / "g", 6, name="flat-{i}.png")
    for i in range(6):
        render_domain(domain_scene("sketch", "test", i), 64).save(gallery / f"sketch-{i}.png")
    profile = tmp_path / "p.toml"
    profile.write_text(
        f'name = "t"\nindex = "{tmp_path / "t.itirx"}"\nshow_pseudo_image = false\n'
        f'[encoder]\nkind = "world"\nlocation = "{random_world_encoder_dir}"\n'
        f'[gallery]\nfolder = "{gallery}"\n'
        f'[domains]\nfolder = "{tmp_path / "domains"}"\nsteps = 4\nbatch_size = 16\n')
    assert main(["index", str(gallery), "--profile", str(profile)]) == 0
    return tmp_path, profile


def test_domain_add_skips_broken_files_with_reasons_then_list_and_remove(domain_world, capsys,
                                                                         monkeypatch):
    tmp, profile = domain_world
    monkeypatch.chdir(tmp)  # --images as a relative path, as people type it
    new = write_domain("sketch", "train", 24, tmp / "new", size=64)
    (new / "images" / "broken.png").write_bytes(b"not a png")
    (new / "images" / "notes.jpg").write_text("hello")
    render_domain(domain_scene("sketch", "train", 99), 64).save(new / "images" / "uncaptioned.png")
    caps = json.loads((new / "captions.json").read_text())
    caps["images/broken.png"] = "a red circle"
    (new / "captions.json").write_text(json.dumps(caps))
    capsys.readouterr()

    # Captions are keyed by path relative to the images folder (or by file name).
    assert main(["domain", "add", "sketch", "--images", "new",
                 "--captions", "new/captions.json", "--profile", str(profile)]) == 0
    out = capsys.readouterr().out
    assert "domain sketch: 24 images, 3 skipped" in out
    assert "broken.png" in out and "notes.jpg" in out
    assert "uncaptioned.png: no caption for it in the captions file" in out
    assert "re-embedded" in out and "of 12 images" in out

    assert main(["domain", "list", "--profile", str(profile)]) == 0
    out = capsys.readouterr().out
    assert "sketch" in out and "base" in out and "index routed here" in out
    assert (tmp / "domains" / "sketch" / "model.safetensors").exists()

    # The index now carries the domain-aware identity, so search still works on it.
    assert main(["search", "a red circle", "--profile", str(profile), "--k", "3"]) == 0
    capsys.readouterr()
    # Adding it again replaces it: every image that used the old adapter is re-embedded.
    assert main(["domain", "add", "sketch", "--images", "new", "--steps", "2",
                 "--captions", "new/captions.json", "--profile", str(profile)]) == 0
    assert "re-embedded" in capsys.readouterr().out
    assert main(["search", "a red circle", "--profile", str(profile), "--k", "3"]) == 0
    capsys.readouterr()

    assert main(["domain", "remove", "sketch", "--profile", str(profile)]) == 0
    assert "removed domain sketch" in capsys.readouterr().out
    assert not (tmp / "domains" / "sketch").exists()
    assert main(["search", "a red circle", "--profile", str(profile), "--k", "3"]) == 0
    assert main(["domain", "remove", "sketch", "--profile", str(profile)]) == 2
    assert "no domain 'sketch'" in capsys.readouterr().err


def test_domain_add_explains_captions_that_match_no_image(domain_world, capsys):
    tmp, profile = domain_world
    new = write_domain("sketch", "train", 24, tmp / "new", size=64)
    (tmp / "caps.json").write_text(json.dumps({"elsewhere/x.png": "a red circle"}))
    assert main(["domain", "add", "sketch", "--images", str(new), "--captions",
                 str(tmp / "caps.json"), "--profile", str(profile)]) == 2
    err = capsys.readouterr().err
    assert "0 captioned, readable images" in err and "'images/sketch-train-000000.png'" in err
    (tmp / "bad.json").write_text(json.dumps({"a.png": 3}))
    assert main(["domain", "add", "sketch", "--images", str(new), "--captions",
                 str(tmp / "bad.json"), "--profile", str(profile)]) == 2
    assert "must be a string or a list of strings" in capsys.readouterr().err
    assert main(["domain", "add", "sketch", "--images", str(tmp / "nope"), "--captions",
                 str(tmp / "bad.json"), "--profile", str(profile)]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_bad_domain_settings_are_refused(capsys):
    assert main(["domain", "list", "--set", "domains.temperature=0"]) == 2
    assert "[domains] needs temperature > 0" in capsys.readouterr().err


def test_domain_add_refuses_too_few_images_and_bad_names(domain_world, capsys):
    tmp, profile = domain_world
    new = write_domain("pixelated", "train", 5, tmp / "few", size=64)
    assert main(["domain", "add", "pixelated", "--images", str(new),
                 "--captions", str(new / "captions.json"), "--profile", str(profile)]) == 2
    assert "a domain needs at least 20" in capsys.readouterr().err
    assert main(["domain", "add", "Bad Name", "--images", str(new),
                 "--captions", str(new / "captions.json"), "--profile", str(profile)]) == 2
    assert "domain name 'Bad Name'" in capsys.readouterr().err


def test_a_turn_shows_and_records_where_its_pseudo_image_routed(
        tmp_path, random_world_encoder_dir, text_tower, tiny_world_pipeline, gallery_of):
    from dataclasses import replace

    from engine.domains import base_router
    from engine.engine import Engine
    from engine.factory import ensure_index
    from engine.profile import GallerySpec, load_profile
    from fusion import DAR
    from generation.world import WorldGenerator
    from retrieval.domain_store import DomainStore
    from retrieval.encoders import WorldEncoder
    from retrieval.spec import DomainSpec
    from ui.chat import _status

    spec = DomainSpec(folder=str(tmp_path / "domains"))
    encoder = WorldEncoder(random_world_encoder_dir, text_tower)
    tower = encoder.model.image
    router = base_router(encoder, spec.temperature, spec.keep, n=40)
    sketches = torch.stack([torch.from_numpy(np.array(render_domain(
        domain_scene("sketch", "train", i), 64))).permute(2, 0, 1) for i in range(20)])
    router.add("sketch", style_features(tower, sketches.float()))
    DomainStore.of(spec).add("sketch", trained_like(DomainAdapter(AdapterConfig("sketch"),
                                                                  tower), 1), router, {})
    encoder = WorldEncoder(random_world_encoder_dir, text_tower, domains=spec)
    assert encoder.domains == ["base", "sketch"] and "+domains@" in encoder.identity

    gallery = gallery_of(tmp_path / "g", 8)
    profile = replace(load_profile("world"), fusion="dar", top_k=4, domains=spec,
                      gallery=GallerySpec(folder=str(gallery)), index=str(tmp_path / "g.itirx"))
    engine = Engine(profile, encoder, ensure_index(profile, encoder), DAR(),
                    WorldGenerator(tiny_world_pipeline[1], text_tower, steps=2, guidance=2.0))
    result = engine.session().send("a red circle")
    assert result.domains and set(result.domains) <= {"base", "sketch"}
    assert sum(result.domains.values()) == pytest.approx(1.0, abs=0.02)
    assert "**Domains:** pseudo-image routed to" in _status(result, engine)


def test_continual_benchmark_runs_end_to_end_and_resumes(tmp_path):
    from evaluation.continual import ContinualConfig, bench_continual, markdown
    from evaluation.plots import continual as plot
    from world.domains import ARRIVALS, BASE, HELD_OUT

    cfg = ContinualConfig(base_train=48, train=24, test=16, base_steps=3, domain_steps=2)
    result = bench_continual(tmp_path / "run", cfg=cfg, latency_repeats=5)
    matrix = result["matrix"]
    assert set(matrix) == {"zero-shot", "sequential", "replay", "oracle", "dar", "joint"}
    assert len(matrix["dar"]) == len(ARRIVALS) + 1
    assert set(matrix["dar"][0]) == {BASE, HELD_OUT}
    assert set(matrix["dar"][-1]) == {BASE, *ARRIVALS, HELD_OUT}
    # Before any arrival every method but joint is the base encoder.
    for m in ("sequential", "replay", "oracle", "dar"):
        assert matrix[m][0] == matrix["zero-shot"][0]
    assert result["summary"]["zero-shot"]["bwt_R@10"] == 0
    assert result["latency"]["adapter_share_of_tower"] < 0.05
    assert "| dar |" in markdown(result)
    assert plot(result, tmp_path / "c.png").stat().st_size > 10_000
    # A second run reads every model and data file it saved instead of training again.
    models = sorted(p.name for p in (tmp_path / "run").rglob("*") if p.is_file())
    again = bench_continual(tmp_path / "run", cfg=cfg, latency_repeats=5)
    assert again["matrix"] == matrix
    assert sorted(p.name for p in (tmp_path / "run").rglob("*") if p.is_file()) == models


def test_domains_keep_the_fusion_trained_for_the_base_encoder(tmp_path, text_tower):
    """Adapters are trained into the base's embedding space, so the shipped ADaFuSE still
    fits; the index identity (what the vectors depend on) does change."""
    from engine.factory import auto_fusion
    from engine.profile import load_profile
    from retrieval.domain_store import DomainStore
    from retrieval.encoders import WorldEncoder
    from retrieval.spec import DomainSpec

    location = load_profile("world").encoder_spec.location
    plain = WorldEncoder(location, text_tower)
    tower = plain.model.image
    router = Router.for_base("base", style_features(tower, images(8)))
    router.add("sketch", style_features(tower, images(8, seed=1) * 0.2))
    spec = DomainSpec(folder=str(tmp_path / "domains"))
    DomainStore.of(spec).add("sketch", DomainAdapter(AdapterConfig("sketch"), tower), router, {})
    routed = WorldEncoder(location, text_tower, domains=spec)
    assert routed.identity != plain.identity
    assert auto_fusion(routed).name == auto_fusion(plain).name == "adafuse:world-adafuse"
