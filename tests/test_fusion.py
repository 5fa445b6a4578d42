"""The fusion interface and the training-free fusions."""

import numpy as np
import pytest

from fusion import BUILT_IN, DAR, Add, TextOnly, load_fusion


def unit(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_dar_is_score_fusion_in_one_vector_with_round_dependent_weights():
    t, g, x = unit(4, 16, 0), unit(4, 16, 1), unit(50, 16, 2)
    rounds = np.array([0, 1, 2, 7])
    fused = DAR()(t, g, rounds)
    w_t, w_g = np.array([0.8, 0.8, 0.5, 0.5]), np.array([0.2, 0.2, 0.5, 0.5])
    assert np.allclose(x @ fused.query.T, w_t * (x @ t.T) + w_g * (x @ g.T), atol=1e-5)
    assert fused.row(0) == {"w_text": 0.8, "w_image": 0.2}
    assert fused.row(3) == {"w_text": 0.5, "w_image": 0.5}


def test_static_fusions_declare_what_they_need():
    t, g = unit(3, 8, 0), unit(3, 8, 1)
    assert not TextOnly().uses_image and DAR().uses_image and Add().uses_image
    assert np.array_equal(TextOnly()(t, None, [0, 1, 2]).query, t)
    added = Add()(t, g, 0).query
    assert np.allclose(np.linalg.norm(added, axis=1), 1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        DAR()(t, g[:2], 0)


def test_fusions_save_and_load_as_checkpoint_folders(tmp_path):
    custom = DAR(early=(0.9, 0.1), late=(0.6, 0.4), switch_round=3)
    custom.save_pretrained(tmp_path / "dar")
    loaded = load_fusion(tmp_path / "dar")
    assert isinstance(loaded, DAR) and loaded == custom
    t, g = unit(2, 8, 0), unit(2, 8, 1)
    assert np.allclose(loaded(t, g, [2, 3]).query, custom(t, g, [2, 3]).query)
    for name, cls in BUILT_IN.items():
        assert isinstance(load_fusion(name), cls)
        cls().save_pretrained(tmp_path / name)
        assert isinstance(load_fusion(tmp_path / name), cls)


def test_unknown_fusion_is_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown fusion 'mean'"):
        load_fusion("mean")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "fusion_config.json").write_text('{"kind": "future"}')
    with pytest.raises(ValueError, match="kind 'future'"):
        load_fusion(tmp_path / "x")
