"""Serving, as a new user meets it: from any directory, any number of gallery folders, a
bounded file cache, and startup failures in one line."""

import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from gradio_client import Client
from PIL import Image

from engine.engine import Engine
from engine.factory import ensure_index
from engine.profile import GallerySpec, load_profile
from fusion import TextOnly
from itir.serve import main as app_main
from ui.chat import build_ui
from world.render import render
from world.scene import sample_scene


@pytest.fixture(scope="module")
def many_folders_app(tmp_path_factory, random_world_encoder, random_world_encoder_dir):
    """70 folders of one image each (larger than a thumbnail), one file not indexed."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(70):
        (root / f"album{i:02d}").mkdir()
        render(sample_scene(i), 128).resize((300, 300)).save(root / f"album{i:02d}" / "p.png")
    (root / "secret.txt").write_text("not for the web")
    home = tmp_path_factory.mktemp("home")
    world = load_profile("world")
    profile = replace(world, fusion="text", show_pseudo_image=False, top_k=8,
                      gallery=GallerySpec(folder=str(root)), index=str(home / "p.itirx"),
                      encoder=replace(world.encoder, location=str(random_world_encoder_dir)))
    engine = Engine(profile, random_world_encoder, ensure_index(profile, random_world_encoder),
                    TextOnly())
    demo = build_ui(engine, delete_cache=(1, 2))
    _, url, _ = demo.launch(prevent_thread_lock=True)
    yield url, root, demo
    demo.close()


def test_results_from_many_folders_are_served_as_thumbnails(many_folders_app):
    url, root, _ = many_folders_app
    client = Client(url, verbose=False)
    _, chat, gallery, pseudo, *_ = client.predict("a red circle", api_name="/send")
    assert len(chat) == 2 and len(gallery) == 8 and pseudo is None
    for item in gallery:
        with Image.open(item["image"]) as im:
            assert max(im.size) <= 256  # a thumbnail, not a copy of the 300px original
    # Nothing outside what the engine returned is reachable: not the folder, not other files.
    for path in (root / "secret.txt", root / "album00" / "p.png"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{url}gradio_api/file={path}")
        assert e.value.code in (403, 404)


def test_the_file_cache_is_swept(many_folders_app):
    url, _, demo = many_folders_app
    Client(url, verbose=False).predict("a blue star", api_name="/send")
    served = {f for files in demo.temp_file_sets for f in files}
    assert served and all(Path(f).exists() for f in served)
    deadline = time.time() + 15
    while any(Path(f).exists() for f in served) and time.time() < deadline:
        time.sleep(0.5)
    assert not any(Path(f).exists() for f in served), "old files stay in Gradio's cache"


def test_startup_failure_is_one_line(tmp_path, monkeypatch, capsys):
    profile = tmp_path / "broken.toml"
    profile.write_text(f'name = "broken"\n[encoder]\nkind = "world"\n'
                       f'location = "{tmp_path / "missing"}"\n')
    monkeypatch.setenv("ITIR_PROFILE", str(profile))
    assert app_main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("itir: no world encoder at") and "Traceback" not in err
    monkeypatch.setenv("ITIR_PROFILE", "no-such-profile")
    assert app_main() == 2
    assert "profile 'no-such-profile' not found" in capsys.readouterr().err
