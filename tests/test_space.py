"""The repository is a Hugging Face Space as it is: front matter, requirements, entry."""

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def requirements(lines: list[str]) -> set[str]:
    out = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            r = Requirement(line)
            out.add(f"{r.name.lower().replace('_', '-')}{r.specifier}")
    return out


def test_requirements_txt_installs_the_same_dependency_set_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    space = (ROOT / "requirements.txt").read_text().splitlines()
    assert requirements(space) == requirements(project["dependencies"])


def test_readme_front_matter_describes_the_space():
    text = (ROOT / "README.md").read_text()
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md must start with the Space's YAML front matter"
    meta = dict(line.split(": ", 1) for line in match.group(1).splitlines())
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["python_version"] == '"3.11"'
    import gradio

    assert meta["sdk_version"].split(".")[0] == gradio.__version__.split(".")[0]


def test_app_py_imports_without_launching_and_exposes_the_builder():
    spec = importlib.util.spec_from_file_location("space_app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # as `import app`: nothing may start here
    from itir.serve import build_app, main

    assert module.build_app is build_app and module.main is main


def test_a_gallery_from_a_hub_dataset_fails_fast_offline_and_uses_a_fetched_copy(
        tmp_path, monkeypatch, random_world_encoder, gallery_of):
    """Offline (the tests' HF_HUB_OFFLINE): one clear message within seconds; a copy fetched
    before into ITIR_HOME/datasets is indexed through the real snapshot_download path."""
    import time
    from dataclasses import replace

    from engine.factory import ensure_index
    from engine.profile import load_profile

    monkeypatch.setenv("ITIR_HOME", str(tmp_path))
    profile = load_profile("world", ["gallery.dataset=someone/holiday-photos"])
    profile = replace(profile, index=str(tmp_path / "d.itirx"))
    assert profile.gallery_folder == tmp_path / "datasets" / "someone--holiday-photos"
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as e:
        ensure_index(profile, random_world_encoder)
    assert time.perf_counter() - start < 5
    assert "could not fetch the gallery dataset 'someone/holiday-photos'" in str(e.value)
    assert "--repo-type dataset --local-dir" in str(e.value)
    gallery_of(profile.gallery_folder, 6)  # as a connected machine would have fetched it
    index = ensure_index(profile, random_world_encoder)
    assert len(index) == 6
    with pytest.raises(ValueError, match="a folder or a dataset, not both"):
        load_profile("world", ["gallery.dataset=a/b", "gallery.folder=/tmp"])


def test_recording_to_a_hub_dataset_without_token_or_hub_records_locally(tmp_path,
                                                                        monkeypatch):
    from engine.recorder import Recorder

    monkeypatch.delenv("HF_TOKEN", raising=False)
    recorder = Recorder(tmp_path / "a", hub_dataset="someone/sessions")
    assert recorder.scheduler is None and "set HF_TOKEN" in recorder.notice
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")  # the hub is unreachable here
    recorder = Recorder(tmp_path / "b", hub_dataset="someone/sessions")
    assert recorder.scheduler is None and "pushing to someone/sessions failed" in recorder.notice
    recorder.write("0123abcd", {"event": "turn"})
    assert (tmp_path / "b" / "0123abcd.jsonl").read_text().strip() == '{"event": "turn"}'
