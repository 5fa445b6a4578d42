"""Dialog files in ChatIR's format, their embedding caches, and `itir eval`."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from evaluation.dialog_set import DialogFileError, chunked, read_dialog_set

DATA = Path(__file__).parent / "data" / "chatir"  # 5-dialog excerpts, ChatIR's MIT licence
FULL = Path(os.environ.get("ITIR_CHATIR_DIR", Path(__file__).parents[2] / "shared" / "data"
                           / "chatir"))


def check_chatir(folder: Path, n: int):
    for name in ("VisDial_v1.0_queries_val.json", "ChatGPT_BLIP2.json"):
        ds = read_dialog_set(folder / name, folder / "Search_Space_val_50k.json")
        assert len(ds.dialogs) == n and ds.rounds == 11
        assert all(len(d) == 11 and all(isinstance(t, str) for t in d) for d in ds.dialogs)
        raw = json.loads((folder / name).read_text())
        assert [ds.corpus[i] for i in ds.targets] == [item["img"] for item in raw]
        from dialog.query import chatir_query

        # ChatIR's round-r query is ", ".join(dialog[:r + 1]).
        assert chatir_query(raw[0]["dialog"][:4]) == ", ".join(raw[0]["dialog"][:4])


def test_chatir_excerpts_parse():
    check_chatir(DATA, 5)


@pytest.mark.skipif(not FULL.is_dir(), reason=f"ChatIR's full files are not at {FULL}")
def test_chatir_files_parse_into_2064_dialogs_of_11_strings():
    check_chatir(FULL, 2064)


def test_bad_dialog_files_say_what_is_wrong(tmp_path):
    bad = tmp_path / "d.json"
    bad.write_text("{not json")
    with pytest.raises(DialogFileError, match="is not JSON"):
        read_dialog_set(bad)
    bad.write_text(json.dumps([{"img": "a.png", "dialog": "a caption"}]))
    with pytest.raises(DialogFileError, match="entry 0 is not"):
        read_dialog_set(bad)
    bad.write_text(json.dumps([{"img": "a.png", "dialog": ["x", "q? a"]},
                               {"img": "b.png", "dialog": ["y"]}]))
    with pytest.raises(DialogFileError, match="entry 1 has 1 strings"):
        read_dialog_set(bad)
    bad.write_text(json.dumps([{"img": "a.png", "dialog": ["x"]}]))
    (tmp_path / "c.json").write_text(json.dumps(["b.png"]))
    with pytest.raises(DialogFileError, match="not in the corpus"):
        read_dialog_set(bad, tmp_path / "c.json")
    with pytest.raises(DialogFileError, match="not found"):
        read_dialog_set(tmp_path / "missing.json")


def test_chunks_are_saved_as_they_finish_and_reused(tmp_path):
    calls = []

    def compute(a, b):
        calls.append((a, b))
        return np.arange(a, b)[:, None].astype(np.float32)

    # A limit that ends inside a chunk still computes (and saves) the whole chunk ...
    out = chunked(tmp_path, 5, 4, compute, "test", total=10)
    assert out[:, 0].tolist() == [0, 1, 2, 3, 4] and calls == [(0, 4), (4, 8)]
    # ... so a later, larger run reuses both and computes only what is new.
    out = chunked(tmp_path, 10, 4, compute, "test", total=10)
    assert out[:, 0].tolist() == list(range(10)) and calls[2:] == [(8, 10)]
    assert not list(tmp_path.glob("*.tmp*"))


def test_pseudo_images_are_drawn_once_and_re_embedded_by_a_new_image_tower(
        tmp_path, random_world_encoder):
    """A new image tower re-embeds the kept pixels; the generator is not called again."""
    from engine.factory import load_models
    from engine.profile import load_profile
    from evaluation.dialog_set import embed_pseudo_images
    from world.build import build_split

    build_split(4, "test", tmp_path / "w", size=32)
    ds = read_dialog_set(tmp_path / "w" / "dialogs.json", limit=3)  # ends inside chunk 2..3
    models = load_models(load_profile("world", ["generator.steps=2"]))
    shipped, generator = models.encoder, models.generator
    first = embed_pseudo_images(ds, shipped, generator, 1, 0, tmp_path / "cache", chunk=2)
    calls = generator.model_calls
    assert first.shape == (3, 11, 1, shipped.dim) and calls > 0
    generator._cache.clear()  # only what is on disk may spare the generator now
    other = embed_pseudo_images(ds, random_world_encoder, generator, 1, 0, tmp_path / "cache",
                                chunk=2)
    assert generator.model_calls == calls  # drawn once, embedded twice
    assert other.shape == first.shape and not np.allclose(other, first)
    # What was kept are the pseudo-images themselves: embedded again, they give `first`.
    (folder,) = (tmp_path / "cache").glob("drawn-*")
    chunks = {p.name: np.load(p) for p in folder.iterdir()}
    assert sorted(chunks) == ["00000000.npy", "00000002.npy"]
    assert chunks["00000002.npy"].shape[:3] == (2, 11, 1)  # whole chunk, past the limit
    pixels = chunks["00000000.npy"]
    assert pixels.dtype == np.uint8 and pixels.shape[:3] == (2, 11, 1)
    from PIL import Image

    again = shipped.encode_images([Image.fromarray(p) for p in pixels[1, :, 0]])
    np.testing.assert_allclose(again, first[1, :, 0].astype(np.float32), atol=2e-3)


def test_query_embeddings_survive_a_new_image_tower(tmp_path, random_world_encoder,
                                                    image_tuned_world_encoder, monkeypatch):
    """Query embeddings are cached by the text side alone: an image-tower fine-tune saved in
    another folder reads them from disk instead of running the text tower again."""
    from evaluation.dialog_set import embed_queries
    from world.build import build_split

    build_split(2, "test", tmp_path / "w", size=32)
    ds = read_dialog_set(tmp_path / "w" / "dialogs.json")
    first = embed_queries(ds, random_world_encoder, tmp_path / "cache")

    def no_text_tower(texts):
        raise AssertionError("query embeddings were computed again")

    monkeypatch.setattr(image_tuned_world_encoder, "encode_texts", no_text_tower)
    again = embed_queries(ds, image_tuned_world_encoder, tmp_path / "cache")
    np.testing.assert_array_equal(again, first)


def test_eval_ranks_every_method_on_a_world_build(tmp_path, monkeypatch, capsys):
    """`itir eval` end to end with the shipped world models on three dialogs."""
    from itir.cli import main
    from world.build import build_split

    monkeypatch.setenv("ITIR_HOME", str(tmp_path / "home"))
    build_split(12, "test", tmp_path / "w", size=32)
    out = tmp_path / "r.json"
    args = ["eval", "--dialogs", str(tmp_path / "w" / "dialogs.json"), "--limit", "3",
            "--methods", "text,image,dar,add", "--json", str(out), "--plot",
            str(tmp_path / "r.png"), "--control", "shuffled", "--set", "generator.steps=2"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "| dar |" in table and "control shuffled" in table
    result = json.loads(out.read_text())
    assert result["dialogs"] == 3 and result["corpus"] == 12
    assert result["drawing"] == {"steps": 2, "guidance": 3.0, "seed": 0}  # what drew them
    for name in ("text", "image", "dar", "add"):
        m = result["methods"][name]
        assert all(len(m[f"hits@{k}"]) == 11 for k in (1, 5, 10))
        assert all(a <= b for a, b in zip(m["hits@10"], m["hits@10"][1:]))  # cumulative
        assert m["bri"] >= 0 and 0 <= m["degradation"] <= 100
    assert result["methods"]["text"]["degradation"] == 0
    assert result["methods"]["dar"]["mean_decision_by_round"]["w_text"][:3] == [0.8, 0.8, 0.5]
    # Every difference between two methods comes with its interval, round by round.
    intervals = result["methods"]["dar"]["ci95_minus"]
    assert set(intervals) == {"text", "image", "add"}
    for lo, hi in intervals["text"]["hits@10"]:
        assert -100 <= lo <= hi <= 100
    assert "dar - text, Hits@10, 95% interval: r0 [" in table
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert set(result["controls"]["shuffled"]) == {"text", "image", "dar", "add"}
    # The caches make a second run cheap; the shipped ADaFuSE is the world encoder's.
    assert main([*args[:5], "--methods", "text,adafuse", "--json", str(out), "--ceiling",
                 "--control", "shuffled"]) == 0
    table = capsys.readouterr().out
    assert "| ceiling |" in table and "| ceiling, shuffled pictures |" in table

    result = json.loads(out.read_text())
    assert result["ceiling"]["weights"][:3] == [0.0, 0.1, 0.2]
    assert len(result["ceiling"]["shuffled"]["hits@10"]) == 11
    for k in (1, 10):  # the ceiling mixes text among others, so it is never below text
        assert all(c >= t for c, t in zip(result["ceiling"][f"hits@{k}"],
                                          result["methods"]["text"][f"hits@{k}"]))
    assert main([*args[:5], "--methods", "text", "--ceiling"]) != 0  # said, before any work
    assert "--ceiling mixes text and pseudo-image" in capsys.readouterr().err
    fused = result["methods"]["adafuse"]
    assert len(fused["hits@10"]) == 11 and 0 < fused["mean_decision_by_round"]["lambda"][0] < 1
    # An ADaFuSE that is not there for the encoder is explained.
    from types import SimpleNamespace

    from engine.profile import load_profile
    from evaluation.chatir import resolve_methods

    with pytest.raises(ValueError, match="has no ADaFuSE checkpoint for encoder"):
        resolve_methods(["adafuse"], load_profile("world"), SimpleNamespace(identity="x@1",
                                                                             dim=256))


def test_tables_fit_short_dialogs_and_controls_are_checked_first():
    from evaluation.chatir import check_control, markdown_table

    short = {"methods": {"x": {"hits@1": [1.0, 2.0], "hits@5": [3.0, 4.0], "hits@10": [5.0, 6.0],
                               "bri": 0.5}}}
    assert "| x | 1.0/3.0/5.0 | 2.0/4.0/6.0 | 0.500 |" in markdown_table(short)
    assert check_control("unrelated:0.3") == "unrelated:0.3"
    for bad in ("shufled", "unrelated:x", "unrelated:0"):
        with pytest.raises(ValueError, match="unknown control"):
            check_control(bad)


def test_the_ceiling_takes_the_best_mix_per_dialog_and_round():
    """Hand-worked in two dimensions: corpus [target at 45 degrees, (1, 0), (0, 1), (-1, 0)].
    Text (1, .3) ranks (1, 0) first and the target second, the pseudo-image (.3, 1) ranks
    (0, 1) first; their even mix ranks the target first. A target at (-1, 0) is last under
    every mix of two vectors in the first quadrant."""
    from evaluation.chatir import hindsight_mix_ranks, method_ranks
    from evaluation.dialog_set import DialogEmbeddings
    from fusion import DAR, TextOnly

    def unit(*v):
        v = np.asarray(v, np.float32)
        return v / np.linalg.norm(v)

    corpus = np.stack([unit(1, 1), unit(1, 0), unit(0, 1), unit(-1, 0)])
    t, g = unit(1, .3), unit(.3, 1)
    emb = DialogEmbeddings(np.stack([[t], [t]]), np.stack([[[g]], [[g]]]).astype(np.float16),
                           corpus, np.array([0, 3]))
    assert method_ranks(emb, TextOnly())[0].tolist() == [[1], [3]]
    assert method_ranks(emb, "image")[0].tolist() == [[1], [3]]
    assert hindsight_mix_ranks(emb).tolist() == [[0], [3]]
    assert hindsight_mix_ranks(emb, weights=(0.0, 1.0)).tolist() == [[1], [3]]

    # On random embeddings it is at or above text and DAR (image weight 0.2, then 0.5) for
    # every dialog and round, whatever the chunking.
    rng = np.random.default_rng(0)
    n, rounds, m = 40, 4, 300
    text = rng.normal(size=(n, rounds, 8)).astype(np.float32)
    pseudo = rng.normal(size=(n, rounds, 1, 8)).astype(np.float32)
    corpus = rng.normal(size=(m, 8)).astype(np.float32)
    emb = DialogEmbeddings(text / np.linalg.norm(text, axis=-1, keepdims=True), pseudo,
                           corpus / np.linalg.norm(corpus, axis=-1, keepdims=True),
                           rng.integers(0, m, n))
    best = hindsight_mix_ranks(emb, chunk=7)
    assert (best <= method_ranks(emb, TextOnly())[0]).all()
    assert (best <= method_ranks(emb, DAR())[0]).all()
    assert (best == hindsight_mix_ranks(emb)).all()
    # With the text in the pseudo-image's place every mix is the text: no room at all.
    assert (hindsight_mix_ranks(emb, image=emb.text) == method_ranks(emb, TextOnly())[0]).all()


def test_train_fusion_end_to_end_writes_a_checkpoint_the_app_loads(tmp_path, monkeypatch):
    """`itir train-fusion` on tiny world builds: caches, a few steps, the hinge over the
    training corpus by default, a card that says so and the command that reproduces it."""
    from fusion import load_fusion
    from itir.cli import main
    from world.build import build_split

    monkeypatch.setenv("ITIR_HOME", str(tmp_path / "home"))
    build_split(12, "train", tmp_path / "train", size=32)
    build_split(10, "val", tmp_path / "val", size=32)
    args = ["train-fusion", "--dialogs", str(tmp_path / "train" / "dialogs.json"),
            "--val-dialogs", str(tmp_path / "val" / "dialogs.json"), "--steps", "4",
            "--set", "generator.steps=2"]
    roots = ["--images", str(tmp_path / "train"), "--val-images", str(tmp_path / "val")]
    assert main([*args, *roots, "--out", str(tmp_path / "corpus")]) == 0
    card = (tmp_path / "corpus" / "README.md").read_text()
    assert "text hinge over the 12 training corpus images" in card
    assert f"--val-images {tmp_path / 'val'}" in card  # each file's images, from its root
    assert "--hinge-over" not in card  # the default needs no flag to reproduce
    fusion = load_fusion(tmp_path / "corpus")
    assert 0 < fusion(*(np.eye(256, dtype=np.float32)[:2],) * 2, np.array([0, 3])
                      ).decision["lambda"][0] < 1
    assert main([*args, "--hinge-over", "batch", "--out", str(tmp_path / "batch")]) == 0
    card = (tmp_path / "batch" / "README.md").read_text()
    assert "text hinge over the batch" in card and "--hinge-over batch" in card


def test_the_plot_adds_a_dashed_line_per_other_number_of_pseudo_images(tmp_path, monkeypatch):
    import training.plots
    from evaluation.chatir import plot

    figures = []
    monkeypatch.setattr(training.plots, "save_figure", lambda fig, out: figures.append(fig))
    curve = {f"hits@{k}": [float(r) for r in range(11)] for k in (1, 5, 10)}
    rows = {"text": curve, "dar": curve}
    plot({"dialogs": 2, "corpus": 5, "k": 1, "methods": rows,
          "by_k": {"1": rows, "4": rows}}, tmp_path / "p.png")
    text, dar, dar4 = figures[0].axes[0].lines
    assert [line.get_label() for line in (text, dar, dar4)] == ["text", "dar K=1", "dar K=4"]
    assert dar4.get_color() == dar.get_color() != text.get_color()  # a method keeps its colour
    assert (dar.get_linestyle(), dar4.get_linestyle()) == ("-", "--")
