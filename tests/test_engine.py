"""The engine wired from a real-model profile: CLIP encoder + diffusers pipeline + DAR."""

import numpy as np
import pytest

from fusion.static import add, dar, dar_weights, text_only
from itir.profile import load_profile
from retrieval.engine import Engine
from world.render import render
from world.scene import sample_scene


def test_dar_is_score_fusion_in_one_vector():
    rng = np.random.default_rng(0)
    t, g, x = rng.normal(size=16), rng.normal(size=16), rng.normal(size=(50, 16))
    for r in (0, 1, 2, 7):
        w_t, w_g = dar_weights(r)
        assert np.allclose(x @ dar(t, g, r), w_t * (x @ t) + w_g * (x @ g))
    assert dar_weights(0) == (0.8, 0.2) and dar_weights(2) == (0.5, 0.5)
    assert np.allclose(np.linalg.norm(add(t / 4, g, 0)), 1.0)
    assert text_only(t, g, 3) is t and dar(t, None, 3) is t


@pytest.fixture
def clip_hub_profile(tmp_path, tiny_clip_dir, tiny_sd_folder):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for i in range(12):
        render(sample_scene(i)).save(gallery / f"{i}.png")
    path = tmp_path / "real.toml"
    path.write_text(f'''name = "real-tiny"
device = "cpu"
fusion = "dar"
top_k = 5
index = "{tmp_path / 'real.itirx'}"
[encoder]
kind = "clip"
location = "{tiny_clip_dir}"
[generator]
kind = "hub"
location = "{tiny_sd_folder}"
steps = 2
guidance = 0.0
[gallery]
folder = "{gallery}"
''')
    return load_profile(str(path))


def test_engine_runs_a_dialog_with_clip_and_a_hub_pipeline(clip_hub_profile):
    engine = Engine.from_profile(clip_hub_profile)
    assert len(engine.index) == 12 and engine.index.meta.encoder.startswith("clip:")
    session = engine.session()
    first = session.send("a red circle")
    second = session.send("on a blue background")
    assert second.query == "a red circle, on a blue background" and second.round == 1
    for result in (first, second):
        assert len(result.hits) == 5 and result.pseudo_image is not None
        scores = [h.score for h in result.hits]
        assert scores == sorted(scores, reverse=True)
        assert {"encode_text", "generate", "search", "total"} <= set(result.timings_ms)


def test_unknown_profile_and_bad_keys_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="known: .*world"):
        load_profile("no-such-profile")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[encoder]\nkind = "world"\nwieghts = "typo"\n')
    with pytest.raises(ValueError, match="unknown key.*wieghts"):
        load_profile(str(bad))
