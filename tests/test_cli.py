"""The command line: bad arguments and expected failures end in one clear line."""

import json

import pytest

from itir.cli import main
from world.render import render
from world.scene import sample_scene


def last_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("k", ["-3", "0"])
def test_search_k_must_be_positive(k, capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", "a red circle", "--k", k])
    assert e.value.code == 2
    assert "argument --k: must be at least 1" in last_error_line(capsys)


def test_generate_with_a_missing_model_is_one_line(tmp_path, capsys):
    profile = tmp_path / "p.toml"
    profile.write_text(f'name = "p"\n[encoder]\nkind = "clip"\nlocation = "unused"\n'
                       f'[generator]\nkind = "hub"\nlocation = "{tmp_path / "no-model"}"\n')
    assert main(["generate", "a red circle", "--profile", str(profile)]) == 2
    line = last_error_line(capsys)
    assert line.startswith("itir generate: could not load text-to-image model from ")
    assert "no-model: no such folder. Point the profile's generator.location at" in line


def test_unknown_profile_and_bad_override_are_one_line(capsys):
    assert main(["search", "a cat", "--profile", "nope"]) == 2
    assert "profile 'nope' not found" in last_error_line(capsys)
    assert main(["search", "a cat", "--set", "top_k"]) == 2
    assert "--set takes KEY=VALUE" in last_error_line(capsys)


@pytest.fixture
def small_world(tmp_path, random_world_encoder_dir, gallery_of):
    """(gallery folder of 6 scenes, a profile TOML on it with the random world encoder)."""
    folder = gallery_of(tmp_path / "g", 6, name="{i}.png")
    profile = tmp_path / "p.toml"
    profile.write_text(f'name = "t"\nindex = "{tmp_path / "t.itirx"}"\nshow_pseudo_image = false\n'
                       f'[encoder]\nkind = "world"\nlocation = "{random_world_encoder_dir}"\n'
                       f'[gallery]\nfolder = "{folder}"\n')
    return folder, profile


def test_index_says_which_index_it_extends_and_how_to_make_another(small_world, tmp_path,
                                                                   capsys):
    folder, profile = small_world
    assert main(["index", str(folder), "--profile", str(profile)]) == 0
    assert "adding" not in capsys.readouterr().err  # a new index: nothing is extended
    render(sample_scene(7), 64).save(folder / "7.png")
    assert main(["index", str(folder), "--profile", str(profile)]) == 0
    err = capsys.readouterr().err
    assert f"adding {folder} to profile 't''s index at {tmp_path / 't.itirx'} (6 images" in err
    assert "--index NEW.itirx" in err


def test_search_several_texts_and_an_image_as_json(small_world, tmp_path, capsys):
    folder, profile = small_world
    args = ["search", "a red circle", "a blue square", "--image", str(folder / "3.png"),
            "--k", "4", "--json", "--profile", str(profile)]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["query"] for r in out] == ["a red circle", "a blue square", str(folder / "3.png")]
    assert all([h["rank"] for h in r["hits"]] == [1, 2, 3, 4] for r in out)
    assert out[2]["hits"][0]["path"] == str((folder / "3.png").resolve())  # finds itself
    assert main(["search", "--profile", str(profile)]) == 2
    assert "give a text to search for" in last_error_line(capsys)
    assert main(["search", "--image", str(tmp_path / "nope.png"), "--profile", str(profile)]) == 2
    assert "file not found" in last_error_line(capsys)


def test_world_profile_keeps_the_world_index_to_itself(small_world, tmp_path, capsys):
    folder, _ = small_world
    assert main(["index", str(folder)]) == 2
    assert "give your images an index of their own" in last_error_line(capsys)
    assert main(["search", "a cat", "--index", str(tmp_path / "typo.itirx")]) == 2
    assert "no index at" in last_error_line(capsys)
    assert main(["index", str(folder / "0.png")]) == 2  # a file, not a folder
