"""The import graph between top-level packages points down only, and has no cycle.

Read from the source (every import, also those inside functions), so it stays true.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Lower number = lower layer. A package may import only packages of a lower layer.
LAYERS = {
    "dialog": 0, "training": 0,  # plain data; the shared training loop
    "fusion": 1, "world": 1,  # vectors only; the synthetic world
    "retrieval": 2,  # text tower, encoders, index
    "generation": 3,  # may read the text tower, nothing above it
    "engine": 4,  # profile, factory, turn pipeline
    "ui": 5, "evaluation": 5,
    "itir": 6,  # CLI and launcher
}


def imports_of(package: str) -> dict[str, set[str]]:
    """{imported top-level package: files importing it} for one package's sources."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in LAYERS and top != package:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_package_is_in_a_layer():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "assets",
                                                                     "profiles"}
    assert packages == set(LAYERS), "add new packages to LAYERS"


def test_imports_point_down_only():
    upward = [f"{package} -> {other} ({', '.join(sorted(files))})"
              for package in LAYERS for other, files in imports_of(package).items()
              if LAYERS[other] >= LAYERS[package]]
    assert not upward, "imports that point up or sideways:\n" + "\n".join(upward)


def test_generation_reads_only_the_text_tower_of_retrieval():
    allowed = {"retrieval.text_tower", "retrieval.weights", "retrieval.device",
               "retrieval.onnx_graph"}
    reached = set()
    for path in (ROOT / "generation").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("retrieval"):
                reached.add(node.module)
            if isinstance(node, ast.Import):
                reached |= {a.name for a in node.names if a.name.startswith("retrieval")}
    assert reached <= allowed, f"generation reaches {sorted(reached - allowed)}"


def test_the_app_entry_uses_the_package_only():
    tree = ast.parse((ROOT / "app.py").read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert modules <= {"itir.serve", "__future__"}
