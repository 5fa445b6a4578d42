import numpy as np
import pytest

from itir.cli import main
from retrieval.encoders import WorldEncoder
from retrieval.gallery import find_images
from retrieval.index import IndexMismatchError, VectorIndex
from retrieval.ingest import index_folder
from retrieval.world_encoder import WorldDualEncoder, with_tower_layers
from world.render import render
from world.scene import sample_scene


def unit(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_round_trip_keeps_vectors_paths_and_results(tmp_path):
    index = VectorIndex("enc-a", 8)
    vecs = unit(20, 8)
    index.add(vecs, [f"img{i}.png" for i in range(20)])
    index.save(tmp_path / "i.itirx")
    loaded = VectorIndex.load(tmp_path / "i.itirx", encoder="enc-a")
    assert loaded.paths == index.paths and loaded.meta.dim == 8
    s1, i1 = index.search(vecs[:3], 5)
    s2, i2 = loaded.search(vecs[:3], 5)
    assert np.array_equal(i1, i2) and np.allclose(s1, s2)
    assert list(i2[:, 0]) == [0, 1, 2]  # each vector finds itself first
    assert [p.name for p in tmp_path.iterdir()] == ["i.itirx"]  # no temporary left behind


def test_incremental_add_after_reload(tmp_path):
    index = VectorIndex("enc-a", 8)
    index.add(unit(5, 8), [f"a{i}" for i in range(5)])
    index.save(tmp_path / "i.itirx")
    again = VectorIndex.load(tmp_path / "i.itirx")
    extra = unit(3, 8, seed=1)
    again.add(extra, ["b0", "b1", "b2"])
    assert len(again) == 8
    assert again.paths[again.search(extra[1], 1)[1][0, 0]] == "b1"


def test_loading_with_another_encoder_says_which(tmp_path):
    index = VectorIndex("world:enc@abc", 8)
    index.add(unit(2, 8), ["x", "y"])
    index.save(tmp_path / "i.itirx")
    with pytest.raises(IndexMismatchError, match="world:enc@abc.*clip:other"):
        VectorIndex.load(tmp_path / "i.itirx", encoder="clip:other")


def test_unreadable_index_file_is_a_clear_error(tmp_path):
    (tmp_path / "bad.itirx").write_bytes(b"not an index")
    with pytest.raises(ValueError, match="not a readable itir index"):
        VectorIndex.load(tmp_path / "bad.itirx")


def test_search_with_k_larger_than_gallery(tmp_path):
    index = VectorIndex("e", 4)
    index.add(unit(3, 4), ["a", "b", "c"])
    scores, ids = index.search(unit(1, 4), 10)
    assert ids.shape == (1, 3)


@pytest.fixture
def messy_gallery(tmp_path):
    root = tmp_path / "gallery"
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    for i in range(3):
        render(sample_scene(i), 64).save(root / f"scene{i}.png")
    render(sample_scene(3), 64).convert("RGBA").save(root / "nested" / "rgba.png")
    render(sample_scene(4), 64).convert("P").save(root / "nested" / "deeper" / "palette.bmp")
    render(sample_scene(5), 64).save(root / "nested" / "photo.JPG")
    render(sample_scene(6), 64).save(root / "nested" / "w.webp")
    good = (root / "scene0.png").read_bytes()
    (root / "corrupt.png").write_bytes(good[: len(good) // 2])  # truncated PNG
    (root / "notes.jpg").write_text("this is not a picture")
    (root / "readme.txt").write_text("ignored: not an image suffix")
    return root


def test_messy_folder_indexes_good_images_and_reports_the_rest(messy_gallery, tmp_path,
                                                               random_world_encoder):
    path = tmp_path / "g.itirx"
    index, report = index_folder(messy_gallery, random_world_encoder, path, batch_size=3)
    assert report.added == 7 and len(index) == 7
    assert sorted(p.rsplit("/", 1)[1] for p, _ in report.skipped) == ["corrupt.png", "notes.jpg"]
    # Adding a new image later embeds only that one; broken files are tried (and reported)
    # again, in case they were fixed.
    render(sample_scene(9), 64).save(messy_gallery / "empty" / "new.png")
    index2, report2 = index_folder(messy_gallery, random_world_encoder, path)
    assert report2.added == 1 and report2.already == 7 and len(index2) == 8
    assert len(report2.skipped) == 2
    assert VectorIndex.load(path).paths == index2.paths


def test_index_cli_reports_skips_and_mismatch(messy_gallery, tmp_path, capsys,
                                              random_world_encoder_dir):
    profile = tmp_path / "p.toml"
    profile.write_text(f'name = "t"\n[encoder]\nkind = "world"\n'
                       f'location = "{random_world_encoder_dir}"\n[generator]\nkind = "none"\n')
    out = tmp_path / "cli.itirx"
    assert main(["index", str(messy_gallery), "--profile", str(profile), "--index", str(out)]) == 0
    captured = capsys.readouterr()
    assert "indexed 7 new image(s)" in captured.out and "skipped 2" in captured.out
    assert "corrupt.png" in captured.err
    # The same index searched with another encoder: a clear message, exit code 2.
    other = VectorIndex("clip:someone-else", 16)
    other.add(unit(1, 16), ["z"])
    other.save(out)
    assert main(["search", "a red circle", "--profile", str(profile), "--index", str(out)]) == 2
    assert "built with encoder 'clip:someone-else'" in capsys.readouterr().err


def test_an_index_survives_a_new_text_side_but_not_a_new_image_side(
        tmp_path, gallery_of, random_world_encoder_dir, random_world_encoder,
        image_tuned_world_encoder, text_tower):
    """Index vectors depend on the image side alone: an encoder whose text head changed
    searches the old index as it is; one whose image tower changed is refused."""
    folder, path = gallery_of(tmp_path / "g", 4), tmp_path / "g.itirx"
    index_folder(folder, random_world_encoder, path)
    model = with_tower_layers(WorldDualEncoder.from_pretrained(random_world_encoder_dir),
                              text_tower.top_layers(1))
    model.save_pretrained(tmp_path / "text-tuned")
    text_tuned = WorldEncoder(tmp_path / "text-tuned", text_tower)
    assert text_tuned.identity != random_world_encoder.identity
    _, report = index_folder(folder, text_tuned, path)
    assert report.already == 4 and report.added == 0
    with pytest.raises(IndexMismatchError, match="world-image@"):
        index_folder(folder, image_tuned_world_encoder, path)


def test_find_images_on_missing_folder_is_clear(tmp_path):
    with pytest.raises(NotADirectoryError, match="does not exist"):
        find_images(tmp_path / "nope")



def test_an_interrupted_indexing_run_resumes_without_re_embedding(tmp_path, random_world_encoder,
                                                                  gallery_of):
    folder = gallery_of(tmp_path / "many", 10)
    path = tmp_path / "big.itirx"

    def stop_after_two_batches(done, total, what):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        index_folder(folder, random_world_encoder, path, batch_size=2, checkpoint_seconds=0,
                     progress=stop_after_two_batches)
    assert len(VectorIndex.load(path)) == 4  # what was embedded before the stop is kept
    index, report = index_folder(folder, random_world_encoder, path, batch_size=2)
    assert report.already == 4 and report.added == 6 and len(index) == 10
    assert sorted(index.paths) == sorted(str(p.resolve()) for p in folder.iterdir())


def test_hnsw_index_round_trips_and_agrees_with_flat(tmp_path):
    vecs = unit(3000, 32, seed=3)
    flat, hnsw = VectorIndex("e", 32), VectorIndex("e", 32, kind="hnsw")
    for index in (flat, hnsw):
        index.add(vecs, [f"p{i}" for i in range(3000)])
    hnsw.save(tmp_path / "h.itirx")
    loaded = VectorIndex.load(tmp_path / "h.itirx", encoder="e")
    assert loaded.kind == "hnsw" and loaded.faiss.hnsw.efSearch == 128
    queries = unit(100, 32, seed=4)
    _, exact = flat.search(queries, 10)
    _, approx = loaded.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx)])
    assert recall > 0.9
    assert np.allclose(loaded.vectors(), vecs, atol=1e-6)  # vectors stay exact


def test_auto_index_kind_switches_to_hnsw_above_the_threshold(messy_gallery, tmp_path,
                                                              random_world_encoder):
    path = tmp_path / "auto.itirx"
    index, _ = index_folder(messy_gallery, random_world_encoder, path, hnsw_above=100)
    assert index.kind == "flat"
    index, _ = index_folder(messy_gallery, random_world_encoder, path, hnsw_above=5)
    assert index.kind == "hnsw" and VectorIndex.load(path).kind == "hnsw"
    scores, ids = index.search(index.vectors()[:3], 1)
    assert list(ids[:, 0]) == [0, 1, 2]  # each image still finds itself first
