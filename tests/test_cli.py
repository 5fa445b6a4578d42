"""The command line: bad arguments and expected failures end in one clear line."""

import pytest

from itir.cli import main


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
    assert line.startswith("itir generate: generator folder") and "does not exist" in line


def test_unknown_profile_and_bad_override_are_one_line(capsys):
    assert main(["search", "a cat", "--profile", "nope"]) == 2
    assert "profile 'nope' not found" in last_error_line(capsys)
    assert main(["search", "a cat", "--set", "top_k"]) == 2
    assert "--set takes KEY=VALUE" in last_error_line(capsys)


def test_index_says_which_index_it_extends_and_how_to_make_another(
        tmp_path, capsys, random_world_encoder_file):
    from world.render import render
    from world.scene import sample_scene

    folder = tmp_path / "mine"
    folder.mkdir()
    for i in range(3):
        render(sample_scene(i), 64).save(folder / f"{i}.png")
    profile = tmp_path / "p.toml"
    profile.write_text(f'name = "t"\nindex = "{tmp_path / "t.itirx"}"\n'
                       f'[encoder]\nkind = "world"\nlocation = "{random_world_encoder_file}"\n')
    assert main(["index", str(folder), "--profile", str(profile)]) == 0
    assert "adding" not in capsys.readouterr().err  # a new index: nothing is extended
    render(sample_scene(7), 64).save(folder / "7.png")
    assert main(["index", str(folder), "--profile", str(profile)]) == 0
    err = capsys.readouterr().err
    assert f"adding {folder} to profile 't''s index at {tmp_path / 't.itirx'} (3 images" in err
    assert "--index NEW.itirx" in err
