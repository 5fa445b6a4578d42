"""Serving, as a new user meets it: from any directory, any number of gallery folders, a
bounded file cache, and startup failures in one line."""

import json
import os
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
    demo = build_ui(engine, delete_cache=(1, 2), thumbnails=home / "thumbnails")
    _, url, _ = demo.launch(prevent_thread_lock=True)
    yield url, root, demo, home / "thumbnails"
    demo.close()


def test_results_from_many_folders_are_served_as_thumbnails(many_folders_app):
    url, root, _, _ = many_folders_app
    client = Client(url, verbose=False)
    _, chat, gallery, pseudo, *_ = client.predict("a red circle", api_name="/send")
    assert len(chat) == 2 and len(gallery) == 8 and pseudo in (None, {"__type__": "update"})
    for item in gallery:
        with Image.open(item["image"]) as im:
            assert max(im.size) <= 256  # a thumbnail, not a copy of the 300px original
    # Nothing outside what the engine returned is reachable: not the folder, not other files.
    for path in (root / "secret.txt", root / "album00" / "p.png"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{url}gradio_api/file={path}")
        assert e.value.code in (403, 404)


def test_thumbnails_are_served_in_place_and_made_once(many_folders_app):
    """No per-turn copy into Gradio's cache (which is swept) and no re-encoding: the second
    search showing the same images serves the very same thumbnail files."""
    url, _, demo, thumbnails = many_folders_app
    client = Client(url, verbose=False, download_files=False)
    first = client.predict("a blue star", api_name="/send")[2]
    made = {p: p.stat().st_mtime_ns for p in thumbnails.iterdir()}
    client.predict(api_name="/reset")
    again = client.predict("a blue star", api_name="/send")[2]
    assert [g["image"]["path"] for g in again] == [g["image"]["path"] for g in first]
    for item in first:
        assert Path(item["image"]["path"]).parent == thumbnails.resolve()
    assert {p: p.stat().st_mtime_ns for p in thumbnails.iterdir()} == made
    assert not {f for files in demo.temp_file_sets for f in files} & set(map(str, made))


def test_gradio_hands_concurrent_events_of_one_session_the_same_state_object():
    # What the UI's per-session lock rests on (ui/chat.py, SessionLocks): if a Gradio
    # upgrade starts copying state per event, this fails instead of turns getting lost.
    import threading

    import gradio as gr
    seen, both = [], threading.Barrier(2, timeout=30)

    def event(state: dict) -> dict:
        seen.append(id(state))
        both.wait()  # the two events of the session run at the same time
        return state
    with gr.Blocks() as demo:
        state = gr.State({"turns": []})
        gr.Button().click(event, [state], [state], api_name="event", concurrency_limit=2)
    _, url, _ = demo.launch(prevent_thread_lock=True)
    try:
        client = Client(url, verbose=False)
        jobs = [client.submit(api_name="/event") for _ in range(2)]
        for job in jobs:
            job.result(timeout=60)
    finally:
        demo.close()
    assert len(seen) == 2 and seen[0] == seen[1]


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


def test_a_hub_profile_offline_fails_before_any_model_library_is_imported(tmp_path):
    # Torch, transformers and Gradio take seconds to import on two cores: a missing model
    # must be said before them (floor: 5 s).
    import subprocess
    import sys
    code = ("import sys; from itir.serve import main; rc = main(); "
            "print(rc, *(m in sys.modules for m in ('torch', 'transformers', 'gradio')))")
    env = {**os.environ, "ITIR_PROFILE": "clip-sdturbo", "ITIR_HOME": str(tmp_path),
           "HF_HUB_CACHE": str(tmp_path / "hub-cache")}  # whatever this machine has cached
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.stdout.split() == ["2", "False", "False", "False"], out.stderr
    assert "could not load CLIP model 'openai/clip-vit-base-patch32'" in out.stderr
    assert "hf download openai/clip-vit-base-patch32 --local-dir DIR" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_preflight_checks_what_the_run_will_load(tmp_path):
    from engine.preflight import check_models_reachable, draws_pseudo_images
    from engine.profile import load_profile
    from fusion import TextOnly
    from generation.spec import GenerationError

    # The encoder is a local folder (present), the generator a hub id not in any cache.
    local = load_profile("blip-sdturbo", [f"encoder.location={json.dumps(str(tmp_path))}",
                                          'generator.location="nobody-here/no-such-pipeline"'])
    check_models_reachable(local, encoder=True, generator=False)
    with pytest.raises(GenerationError, match="text-to-image model 'nobody-here/no-such-"
                                              "pipeline'.*generator.location = DIR"):
        check_models_reachable(local, encoder=True, generator=True)
    # A text-only fusion (built in, or a saved folder) with nothing to show: the app never
    # loads the generator, so it is not asked for.
    assert draws_pseudo_images(local)
    quiet = local.override("show_pseudo_image=false")
    assert draws_pseudo_images(quiet)  # fusion = auto may pick a learned one
    assert not draws_pseudo_images(quiet.override("fusion=text"))
    TextOnly().save_pretrained(tmp_path / "text-fusion")
    assert not draws_pseudo_images(quiet.override(
        f"fusion={json.dumps(str(tmp_path / 'text-fusion'))}"))
    # A folder that is not there is said as a folder, not as a hub id to download.
    missing = local.override(f"encoder.location={json.dumps(str(tmp_path / 'blip'))}")
    with pytest.raises(OSError, match=r"from .*blip: no such folder\. Point the profile's "
                                      "encoder.location at the folder"):
        check_models_reachable(missing, encoder=True, generator=False)


def test_sigkill_mid_session_keeps_every_finished_turn_and_restarts_cleanly(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import threading

    from engine.recorder import read_records

    env = {**os.environ, "ITIR_HOME": str(tmp_path / "home"),
           "ITIR_RECORDING_FOLDER": str(tmp_path / "records")}
    port = 7950 + os.getpid() % 40

    def serve():
        proc = subprocess.Popen(
            [sys.executable, "-m", "itir.cli", "serve", "--port", str(port), "--set",
             "gallery.world_scenes=24"], cwd=tmp_path, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 180
        while time.time() < deadline:
            assert proc.poll() is None, "itir serve exited"
            try:
                return proc, Client(f"http://127.0.0.1:{port}/", verbose=False)
            except Exception:
                time.sleep(0.3)
        raise RuntimeError("itir serve did not come up")

    proc, client = serve()
    messages = ["a red circle", "it is large", "on a blue background", "and a green star",
                "the star is small"]
    for message in messages[:4]:
        client.predict(message, api_name="/send")
    def last_turn():
        try:
            client.predict(messages[4], api_name="/send")
        except Exception:  # the server is killed under it, on purpose
            pass

    threading.Thread(target=last_turn, daemon=True).start()
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-turn, or just after: no chance to clean up
    proc.wait()
    records = read_records([tmp_path / "records"])
    turns = [r for r in records if r["event"] == "turn"]
    assert len(turns) >= 4 and [r["user_text"] for r in turns[:4]] == messages[:4]
    assert len({r["session"] for r in records}) == 1
    proc, client = serve()  # the same home: restarts without a complaint
    try:
        _, chat, *_ = client.predict("a yellow square", api_name="/send")
        assert len(chat) == 2
    finally:
        proc.terminate()
        proc.wait(20)
