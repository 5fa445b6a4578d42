"""The turn pipeline's seams: the pseudo-image, the round and failures reach the fusion and
the person as they should. Real encoder, real (tiny) generator, real FAISS index."""

import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.engine import Engine
from engine.factory import build_engine, ensure_index
from engine.profile import GallerySpec, load_profile
from fusion import DAR, TextOnly
from generation.base import Generator
from generation.spec import GeneratorSpec
from generation.world import WorldGenerator


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, gallery_of):
    return gallery_of(tmp_path_factory.mktemp("gallery"), 24)


@pytest.fixture(scope="module")
def profile(tmp_path_factory, gallery, random_world_encoder_dir):
    home = tmp_path_factory.mktemp("home")
    return replace(load_profile("world"), fusion="dar", top_k=6,
                   gallery=GallerySpec(folder=str(gallery)), index=str(home / "g.itirx"),
                   encoder=replace(load_profile("world").encoder,
                                   location=str(random_world_encoder_dir)))


@pytest.fixture(scope="module")
def tiny_generator(tiny_world_pipeline, text_tower):
    return WorldGenerator(tiny_world_pipeline[1], text_tower, steps=2, guidance=2.0)


@pytest.fixture(scope="module")
def parts(profile, random_world_encoder):
    return profile, random_world_encoder, ensure_index(profile, random_world_encoder)


def expected_hits(engine, q, k):
    scores = engine.index.vectors() @ q
    order = np.argsort(-scores, kind="stable")[:k]
    return [engine.index.paths[i] for i in order], scores[order]


def test_fusion_gets_the_pseudo_image_embedding_and_the_round(parts, tiny_generator):
    profile, encoder, index = parts
    engine = Engine(profile, encoder, index, DAR(), tiny_generator)
    assert engine.describe() == ("fusion dar · text on torch · pseudo-images in 2 steps on "
                                 "torch · 24 images")
    session = engine.session()
    results = [session.send(m) for m in ("a red circle", "it is large", "the background is blue")]
    assert [r.round for r in results] == [0, 1, 2]
    # DAR's weights change at round 2: the round reached the fusion.
    assert [r.decision["w_image"] for r in results] == [0.2, 0.2, 0.5]
    for result in results:
        t = encoder.encode_texts([result.query])[0]
        g = encoder.encode_images([result.pseudo_image])[0]
        w_t, w_g = (0.8, 0.2) if result.round < 2 else (0.5, 0.5)
        paths, scores = expected_hits(engine, w_t * t + w_g * g, profile.top_k)
        assert [h.path for h in result.hits] == paths
        assert np.allclose([h.score for h in result.hits], scores, atol=1e-4)
        # ... and the image mattered: text alone would have scored differently.
        _, text_scores = expected_hits(engine, t, profile.top_k)
        assert not np.allclose(text_scores, scores, atol=1e-3)
    assert {"encode_text", "generate", "embed_image", "fuse", "search", "total"} <= set(
        results[-1].timings_ms)


def test_a_cpu_batch_draws_fewer_steps_the_more_images_it_holds():
    for bad in ("-1", "nan", "inf", "5000"):  # a wait for company is bounded and finite
        with pytest.raises(ValueError, match="gather_ms must be from 0 to 1000"):
            load_profile("world", [f"generator.gather_ms={bad}"])
    spec = GeneratorSpec(steps=5, cpu_step_budget=10, fewest_steps=2)
    # Under two steps each (six or more images) a turn searches with the text alone.
    assert [spec.steps_for(n, 5) for n in (1, 2, 3, 4, 5, 6, 8)] == [5, 5, 3, 2, 2, 0, 0]
    assert spec.steps_for(8, 1) == 1  # never more than the generator's own
    assert [GeneratorSpec(cpu_step_budget=0).steps_for(n, 5) for n in (1, 8)] == [5, 5]
    with pytest.raises(ValueError, match="cpu_step_budget must be 0"):
        load_profile("world", ["generator.cpu_step_budget=-1"])
    with pytest.raises(ValueError, match="fewest_steps must be at least 1"):
        load_profile("world", ["generator.fewest_steps=0"])
    with pytest.raises(ValueError, match="must cover samples x fewest_steps"):
        load_profile("world", ["generator.samples=6"])  # 6 x 2 > 10: never a picture


def wait_for(condition) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.001)


def block(models, running: bool = False) -> threading.Event:
    """Queue a call that holds the model thread until the returned event is set; with
    `running`, return once it holds it."""
    release, started = threading.Event(), threading.Event()
    threading.Thread(target=models.run, args=(lambda: (started.set(), release.wait(10)),),
                     daemon=True).start()
    if running:
        assert started.wait(10)
    return release


def in_threads(calls: dict) -> tuple[list[threading.Thread], dict]:
    results = {}

    def run(name, call):
        try:
            results[name] = call()
        except Exception as e:  # noqa: BLE001  (the test looks at it)
            results[name] = e
    threads = [threading.Thread(target=run, args=item, daemon=True) for item in calls.items()]
    for thread in threads:
        thread.start()
    return threads, results


def test_turns_drawing_together_draw_fewer_steps_and_show_what_they_searched(
        parts, tiny_world_pipeline, text_tower):
    profile, encoder, index = parts
    profile = replace(profile, generator=replace(profile.generator, cpu_step_budget=8,
                                                 fewest_steps=1))
    generator = WorldGenerator(tiny_world_pipeline[1], text_tower, steps=4, guidance=2.0)
    engine = Engine(profile, encoder, index, DAR(), generator)
    models = engine.model_thread
    assert engine.search("a red circle").steps == 4  # one turn draws all its steps
    # Four drawings queue while the model thread is busy, and go as one batch.
    release = block(models, running=True)
    queries = ["a blue square", "a green star", "a big circle", "two triangles"]
    threads, drawn = in_threads({q: lambda q=q: engine._draw(q, 1) for q in queries})
    wait_for(lambda: len(models._calls) == len(queries))
    calls = generator.model_calls
    release.set()
    for thread in threads:
        thread.join(10)
    assert generator.model_calls == calls + 1
    assert {d.steps for d in drawn.values()} == {2}  # 4 images x 4 steps > 8: 8 // 4
    for q in queries:  # the picture shown is the one searched with, not drawn again
        shown = engine.pseudo_image(q, drawn[q].steps)
        assert np.array_equal(np.asarray(shown), np.asarray(drawn[q].images[0]))
    assert generator.model_calls == calls + 1
    full = engine.pseudo_image(queries[0])  # asked for all its steps: drawn now
    assert generator.model_calls == calls + 2
    assert not np.array_equal(np.asarray(full), np.asarray(drawn[queries[0]].images[0]))
    from ui.chat import _status  # the person is told

    busy = replace(engine.search(queries[0]), steps=2)
    assert "pseudo-image in 2 of 4 steps (the CPU was serving several turns at once)" in \
        _status(busy, engine)
    assert "steps (the CPU" not in _status(replace(busy, steps=4), engine)


class Picky(DAR):
    """DAR that fails at round 7, to see one turn's failure stay that turn's."""

    calls = 0

    def __call__(self, t, g, rounds):
        self.calls += 1
        if rounds[0] == 7:
            raise ValueError("no fusing at round 7")
        return super().__call__(t, g, rounds)


def test_turns_searched_in_one_drawing_call_each_get_their_own_results(
        parts, tiny_world_pipeline, text_tower):
    profile, encoder, index = parts
    generator = WorldGenerator(tiny_world_pipeline[1], text_tower, steps=2, guidance=2.0)
    fusion = Picky()
    engine = Engine(profile, encoder, index, fusion, generator)
    models = engine.model_thread
    turns = {"a blue square": dict(round_=0), "a green star": dict(round_=2),
             "a big red circle": dict(round_=3, liked=[index.paths[0]],
                                      rejected=[index.paths[1]]),
             "two triangles": dict(round_=7)}
    alone = {q: engine.search(q, **kw) for q, kw in turns.items() if kw["round_"] != 7}
    generator._cache.clear()
    # A turn that fuses the image makes one model call (its text, drawing, fusion and
    # search): hold the model thread while the four queue, so that they go as one batch.
    release = block(models, running=True)
    threads, results = in_threads({q: lambda q=q, kw=kw: engine.search(q, **kw)
                                   for q, kw in turns.items()})
    wait_for(lambda: len(models._calls) == len(turns))  # one each: no text call of its own
    assert {call.key[0] for call in models._calls} == {"generate"}
    calls = generator.model_calls
    release.set()
    for thread in threads:
        thread.join(10)
    assert generator.model_calls == calls + 1  # one batch
    assert fusion.calls == 3 + 4  # each turn fused once: the batch did not fail and run again
    assert isinstance(results["two triangles"], ValueError)  # that turn's own failure
    for q, before in alone.items():
        now = results[q]
        assert now.steps == 2 and now.decision == before.decision
        assert np.allclose(now.query_vector, before.query_vector, atol=1e-3)
        assert [h.path for h in now.hits][:3] == [h.path for h in before.hits][:3]
        assert now.timings_ms["generate"] >= 0 and "embed_image" in now.timings_ms
        assert now.timings_ms["encode_text"] > 0  # the batch's text, timed on its own
    assert index.paths[1] not in [h.path for h in results["a big red circle"].hits]
    vectors = [v / np.linalg.norm(v) for v in (results[q].query_vector[0] for q in alone)]
    assert max(float(a @ b) for i, a in enumerate(vectors) for b in vectors[i + 1:]) < 0.999


def test_a_lone_turn_draws_the_steps_its_share_of_the_apps_load_allows(
        parts, tiny_world_pipeline, text_tower):
    """While other sessions' turns are under way (or were, a moment ago), a turn that
    draws alone still shares the CPU's step budget with them."""
    profile, encoder, index = parts
    profile = replace(profile, generator=replace(profile.generator, cpu_step_budget=8,
                                                 fewest_steps=1, gather_ms=0))
    generator = WorldGenerator(tiny_world_pipeline[1], text_tower, steps=4, guidance=2.0)
    engine = Engine(profile, encoder, index, DAR(), generator)
    engine.load.window_s = 60  # "lately" spans the whole test, however slow the machine
    assert engine.search("a red circle").steps == 4  # alone: every step
    with engine.load.turn(), engine.load.turn(), engine.load.turn():  # three more sessions
        assert engine.search("a blue square").steps == 2  # 4 turns x 4 steps > 8: 8 // 4
    assert engine.search("a green star").steps == 2  # they were busy a moment ago
    engine.load.window_s = 0.0
    assert engine.search("a big circle").steps == 4


def busy_engines(parts, pipeline, tower, budget: int, steps: int) -> tuple:
    """(DAR engine that sheds drawings under two steps a turn, its generator, the same
    engine reading the text alone) over `parts`, with a CPU step budget of `budget`."""
    profile, encoder, index = parts
    profile = replace(profile, generator=replace(profile.generator, cpu_step_budget=budget,
                                                 fewest_steps=2, gather_ms=0))
    generator = WorldGenerator(pipeline[1], tower, steps=steps, guidance=2.0)
    return (Engine(profile, encoder, index, DAR(), generator), generator,
            Engine(profile, encoder, index, TextOnly(), None))


def test_a_turn_too_busy_to_draw_a_useful_picture_searches_with_its_text_and_shows_one_later(
        parts, tiny_world_pipeline, text_tower):
    engine, generator, text_only = busy_engines(parts, tiny_world_pipeline, text_tower,
                                                budget=8, steps=4)
    engine.load.window_s = 60  # "lately" spans the whole test, however slow the machine
    calls = generator.model_calls
    with engine.load.turn(), engine.load.turn(), engine.load.turn(), engine.load.turn():
        busy = engine.search("a blue square")  # five turns: 8 // 5 = 1 step, under two
    assert generator.model_calls == calls  # nothing drawn for the search
    assert busy.steps == 0 and busy.pseudo_image is None and busy.fusion == "text"
    alone = text_only.search("a blue square")
    assert [h.path for h in busy.hits] == [h.path for h in alone.hits]
    assert np.allclose(busy.query_vector, alone.query_vector, atol=1e-5)
    from ui.chat import _status  # the person is told why

    assert "searched with the text alone: the CPU was serving several turns at once" in \
        _status(busy, engine)
    # The picture the person sees is drawn afterwards, in the fewest steps, load or not.
    shown = engine.pseudo_image("a blue square", busy.steps)
    assert shown is not None and generator.model_calls == calls + 1
    assert generator.cached("a blue square", engine.profile.generator.seed, 2) is not None


def test_turns_too_many_to_draw_for_search_together_each_with_its_own_text(
        parts, tiny_world_pipeline, text_tower):
    engine, generator, text_only = busy_engines(parts, tiny_world_pipeline, text_tower,
                                                budget=4, steps=2)
    queries = ["a blue square", "a green star", "a big circle"]  # 4 // 3 = 1 step, under 2
    release = block(engine.model_thread, running=True)
    threads, results = in_threads({q: lambda q=q: engine.search(q) for q in queries})
    wait_for(lambda: len(engine.model_thread._calls) == len(queries))
    calls = generator.model_calls
    release.set()
    for thread in threads:
        thread.join(10)
    assert generator.model_calls == calls  # one call for all three, and nothing drawn
    for q in queries:
        assert results[q].steps == 0 and results[q].fusion == "text"
        assert [h.path for h in results[q].hits] == [h.path for h in text_only.search(q).hits]


def test_replay_draws_a_turn_that_searched_with_its_text_alone_as_a_quiet_app_would(
        parts, tiny_world_pipeline, text_tower, tmp_path, monkeypatch):
    import json

    from evaluation.replay import counterfactual, sessions_of

    profile, encoder, index = parts
    generator = WorldGenerator(tiny_world_pipeline[1], text_tower, steps=2, guidance=2.0)
    engine = Engine(profile, encoder, index, DAR(), generator)
    asked, draw = [], generator.generate
    monkeypatch.setattr(generator, "generate",
                        lambda *a, **kw: asked.append(kw["steps"]) or draw(*a, **kw))
    session, target = "ab" * 8, index.paths[0]
    rows = [{"session": session, "event": "turn", "round": 0, "query": "a red star",
             "pseudo_image_steps": 0},  # a busy CPU: searched with the text alone
            {"session": session, "event": "turn", "round": 1, "query": "a red star. blue",
             "pseudo_image_steps": 1},
            {"session": session, "event": "found", "round": 1,
             "outcome": {"status": "found", "round": 1, "path": target}}]
    (tmp_path / f"{session}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = counterfactual(sessions_of([tmp_path]), engine, {"dar": DAR()}, rounds=1)
    assert result["sessions"] == 1 and set(result["methods"]) == {"text", "dar"}
    assert asked == [None, 1]  # the generator's own steps for the text-only turn


class FailingGenerator(Generator):
    """Fault injection: a generator whose model fails the way a GPU out of memory does."""

    identity, steps, guidance, size = "failing", 1, 0.0, 32
    device = torch.device("cpu")

    def __init__(self, error: Exception):
        super().__init__()
        self.error = error

    def _run(self, prompts, seeds, steps):
        raise self.error


def test_failed_generation_is_a_notice_and_the_text_searches_alone(parts):
    profile, encoder, index = parts
    engine = Engine(profile, encoder, index, DAR(),
                    FailingGenerator(torch.OutOfMemoryError("CUDA out of memory")))
    result = engine.session().send("a green star")
    assert result.pseudo_image is None
    assert "No pseudo-image this turn (out of memory while generating: CUDA out of memory)" \
        in result.notice
    assert result.fusion == "text" and result.decision == {"w_text": 1.0}
    paths, _ = expected_hits(engine, encoder.encode_texts(["a green star"])[0], profile.top_k)
    assert [h.path for h in result.hits] == paths


def test_a_bug_in_generation_is_not_hidden(parts):
    profile, encoder, index = parts
    engine = Engine(profile, encoder, index, DAR(), FailingGenerator(KeyError("oops")))
    with pytest.raises(KeyError):
        engine.search("a green star")


def test_text_fusion_skips_what_it_does_not_need(parts, tiny_generator):
    profile, encoder, index = parts
    shown = Engine(replace(profile, fusion="text"), encoder, index, TextOnly(), tiny_generator)
    result = shown.search("a blue square")
    assert result.pseudo_image is not None and "embed_image" not in result.timings_ms
    hidden = Engine(replace(profile, fusion="text", show_pseudo_image=False), encoder, index,
                    TextOnly(), tiny_generator)
    result = hidden.search("a blue square")
    assert result.pseudo_image is None and "generate" not in result.timings_ms


def test_build_engine_loads_no_generator_when_nothing_needs_it(profile):
    engine = build_engine(replace(profile, fusion="text", show_pseudo_image=False))
    assert engine.generator is None and engine.fusion.name == "text"


def test_bad_k_round_and_missing_generator_are_clear(parts):
    profile, encoder, index = parts
    engine = Engine(profile, encoder, index, TextOnly())
    with pytest.raises(ValueError, match="k must be at least 1"):
        engine.search("a red circle", k=0)
    with pytest.raises(ValueError, match="round starts at 0"):
        engine.search("a red circle", round_=-1)
    with pytest.raises(ValueError, match="has no generator"):
        Engine(profile, encoder, index, DAR(), None)


@pytest.fixture(params=["clip", "blip"])
def clip_hub_profile(request, tmp_path, tiny_clip_dir, tiny_blip_dir, tiny_sd_folder, gallery):
    """A real-model profile (tiny random CLIP or BLIP retrieval + a tiny SD pipeline)."""
    kind = request.param
    location = tiny_clip_dir if kind == "clip" else tiny_blip_dir
    path = tmp_path / "real.toml"
    path.write_text(f'''name = "real-tiny"
device = "cpu"
fusion = "auto"
fusion_fallback = "dar"
top_k = 5
index = "{tmp_path / 'real.itirx'}"
[encoder]
kind = "{kind}"
location = "{location}"
[generator]
kind = "hub"
location = "{tiny_sd_folder}"
steps = 2
guidance = 0.0
[gallery]
folder = "{gallery}"
''')
    return load_profile(str(path))


def test_engine_runs_a_dialog_with_clip_or_blip_and_a_hub_pipeline(clip_hub_profile):
    engine = build_engine(clip_hub_profile)
    kind = clip_hub_profile.encoder.kind
    # No learned fusion was trained for this encoder: DAR, and the person is told.
    assert engine.fusion.name == "dar" and "no ADaFuSE checkpoint" in engine.notice
    assert len(engine.index) == 24 and engine.index.meta.encoder.startswith(f"{kind}:")
    session = engine.session()
    first = session.send("a red circle")
    second = session.send("on a blue background")
    assert second.query == "a red circle, on a blue background" and second.round == 1
    for result in (first, second):
        assert len(result.hits) == 5 and result.pseudo_image is not None
        scores = [h.score for h in result.hits]
        assert scores == sorted(scores, reverse=True)
        assert result.decision == {"w_text": 0.8, "w_image": 0.2}


def test_unknown_profile_bad_keys_and_overrides_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="known: .*world"):
        load_profile("no-such-profile")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[encoder]\nkind = "world"\nwieghts = "typo"\n')
    with pytest.raises(ValueError, match="unknown key.*wieghts"):
        load_profile(str(bad))
    assert load_profile("world", ["generator.steps=2", "top_k=5"]).generator.steps == 2
    with pytest.raises(ValueError, match="steps takes a int"):
        load_profile("world", ["generator.steps=many"])
    with pytest.raises(ValueError, match="unknown section"):
        load_profile("world", ["gnerator.steps=2"])
    with pytest.raises(ValueError, match="runtime must be one of auto, torch, onnx"):
        load_profile("world", ["generator.runtime=tensorrt"])
    with pytest.raises(ValueError, match="runtime onnx is for the world generator"):
        load_profile("clip-sdturbo", ["generator.runtime=onnx"])


def test_dtype_policy_and_fallback_are_checked():
    from retrieval.device import resolve_dtype

    assert resolve_dtype("auto", "cuda") == "float16"
    assert resolve_dtype("auto", "cpu") == resolve_dtype("auto", "mps") == "float32"
    assert resolve_dtype("bfloat16", "cuda:1") == "bfloat16"
    with pytest.raises(ValueError, match="needs a GPU"):
        resolve_dtype("float16", "cpu")
    profile = load_profile("world", ["device=cpu"])
    assert profile.torch_dtype == "float32" and "device cpu (float32)" in profile.describe()
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_profile("world", ["dtype=half"])
    with pytest.raises(ValueError, match="fusion_fallback must be one of"):
        load_profile("world", ["fusion_fallback=adafuse"])


def test_environment_overrides_every_field_and_the_cli_wins(monkeypatch):
    monkeypatch.setenv("ITIR_GENERATOR_STEPS", "2")
    monkeypatch.setenv("ITIR_FUSION", "dar")
    monkeypatch.setenv("ITIR_GALLERY_WORLD_SCENES", "100")
    monkeypatch.setenv("ITIR_SHOW_PSEUDO_IMAGE", "false")
    monkeypatch.setenv("ITIR_HOME", "/somewhere")  # not a profile field: no override
    profile = load_profile("world", ["generator.steps=3"])
    assert profile.generator.steps == 3 and profile.fusion == "dar"
    assert profile.gallery.world_scenes == 100 and profile.show_pseudo_image is False
    monkeypatch.setenv("ITIR_TOP_K", "zero")
    with pytest.raises(ValueError, match="top_k takes a int"):
        load_profile("world")


def test_a_warm_up_searches_as_sessions_do_records_nothing_and_raises_what_fails(
        parts, tiny_generator, tmp_path):
    from engine.recorder import Recorder

    profile, encoder, index = parts
    engine = Engine(profile, encoder, index, DAR(), tiny_generator,
                    recorder=Recorder(tmp_path / "sessions"))
    calls = tiny_generator.model_calls
    assert engine.warm_up(4) > 0
    assert tiny_generator.model_calls > calls  # the drawings ran, in 1 to 4 batches
    assert not list((tmp_path / "sessions").iterdir())  # nobody's session

    class Broken(DAR):
        def __call__(self, t, g, rounds):
            raise RuntimeError("this fusion cannot run")

    broken = Engine(profile, encoder, index, Broken(), tiny_generator)
    with pytest.raises(RuntimeError, match="this fusion cannot run"):
        broken.warm_up(2)
