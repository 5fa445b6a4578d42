"""The repository is a Hugging Face Space as it is: front matter, requirements, entry."""

import importlib.util
import re
import tomllib
from pathlib import Path

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
