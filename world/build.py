"""Write a split of the world to disk: images, ground truth, and ChatIR-format files.

Layout of OUT: images/<split>-<index>.png, scenes.jsonl (one scene per line: path, seed,
ground truth, full caption, dialog), dialogs.json and corpus.json (ChatIR format, image
paths relative to OUT).

Building into a folder that holds an earlier build replaces it completely. The new build is
rendered into a staging folder inside OUT and moved into place at the end, scenes.jsonl last,
so an interrupted build leaves the earlier one untouched and a folder with scenes.jsonl is
always complete and consistent. A folder holding anything a build did not write is refused:
a user's own files are never deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from world.captions import full_caption
from world.dialogs import make_dialog
from world.render import render
from world.scene import SPLITS, sample_scene, split_seed

DONE = "scenes.jsonl"  # moved in last: its presence means the folder is complete
OUTPUTS = ("images", "dialogs.json", "corpus.json", DONE)  # in the order they are moved in
STAGING_PREFIX = ".itir-world-build-"
_IMAGE_NAME = re.compile(rf"({'|'.join(SPLITS)})-\d{{6,}}\.png")


def build_split(n: int, split: str, out: str | Path, size: int = 128,
                progress: Callable[[int, int], None] | None = None, first: int = 0,
                wrong_answers: float = 0.0, preamble: str = "") -> Path:
    """Render scenes `first`..`first+n-1` of `split` into `out`, replacing an earlier build.

    `out` must be new, empty or an earlier world build. Images keep the scene's index in the
    split (images/test-000120.png is scene 120). `progress(done, n)` is called per scene.
    `wrong_answers`: the chance that an answer is false; `preamble`: words every dialog's
    first message starts with (a person who writes a long first message: a robustness
    control that pushes late rounds past a text encoder's window).
    """
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    if first < 0:
        raise ValueError(f"--first must be at least 0, got {first}")
    if not 0 <= wrong_answers <= 1:
        raise ValueError(f"--wrong-answers is a fraction in [0, 1], got {wrong_answers}")
    split_seed(split, first + n - 1)  # an unknown split or a range past its end fails now
    out = Path(out)
    _check_replaceable(out)
    out.mkdir(parents=True, exist_ok=True)
    # Staging inside `out` (not beside it) keeps the rename on one file system and leaves
    # `out` itself in place: its permissions, a symlink to it, a shell sitting in it.
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        _write_split(staging, range(first, first + n), split, size, progress, wrong_answers,
                     preamble.strip())
        _move_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # and with it the earlier images
    return out


def read_scenes(folder: str | Path) -> list[dict]:
    path = Path(folder) / DONE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build the split with `itir world build`")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _check_replaceable(out: Path) -> None:
    """Refuse a folder holding anything a world build did not write."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out} is a file; pick an empty or new folder for the world build")
    foreign = _foreign_entries(out)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ValueError(f"{out} is not empty and is not an earlier world build (it holds "
                         f"{shown}); pick an empty or new folder for the world build")


def _foreign_entries(out: Path) -> list[str]:
    """Names under `out` that no world build writes (an interrupted build's are its own)."""
    ours = {*OUTPUTS, DONE + ".tmp"} - {"images"}  # .tmp: left by builds before staging
    foreign = []
    for entry in out.iterdir():
        if entry.name == "images" and entry.is_dir():
            foreign += [f"images/{p.name}" for p in entry.iterdir()
                        if not (_IMAGE_NAME.fullmatch(p.name) and p.is_file())]
        elif not ((entry.name in ours and entry.is_file())
                  or (entry.name.startswith(STAGING_PREFIX) and entry.is_dir())):
            foreign.append(entry.name)
    return sorted(foreign)


def _write_split(folder: Path, indices: range, split: str, size: int,
                 progress: Callable[[int, int], None] | None, wrong: float = 0.0,
                 preamble: str = "") -> None:
    (folder / "images").mkdir()
    records = []
    for done, i in enumerate(tqdm(indices, desc=f"world {split}", unit="scene"), 1):
        scene = sample_scene(split_seed(split, i))
        rel = f"images/{split}-{i:06d}.png"
        render(scene, size).save(folder / rel)
        dialog = make_dialog(scene, wrong=wrong)
        if preamble:
            dialog[0] = f"{preamble} {dialog[0]}"
        records.append({"img": rel, "seed": scene.seed, "scene": scene.to_dict(),
                        "caption": full_caption(scene), "dialog": dialog})
        if progress:
            progress(done, len(indices))
    (folder / "dialogs.json").write_text(json.dumps(
        [{"img": r["img"], "dialog": r["dialog"]} for r in records], indent=0))
    (folder / "corpus.json").write_text(json.dumps([r["img"] for r in records]))
    (folder / DONE).write_text("".join(json.dumps(r) + "\n" for r in records))


def _move_in(staging: Path, out: Path) -> None:
    """Replace the build in `out` by the one in `staging`; the earlier one ends in staging."""
    # Without scenes.jsonl the folder reads as unfinished (and is rebuilt) until the end.
    (out / DONE).unlink(missing_ok=True)
    (out / (DONE + ".tmp")).unlink(missing_ok=True)
    for leftover in out.glob(STAGING_PREFIX + "*"):  # from builds killed mid-way
        if leftover != staging:
            shutil.rmtree(leftover, ignore_errors=True)
    if (out / "images").exists():
        os.replace(out / "images", staging / "earlier-images")
    for name in OUTPUTS:
        os.replace(staging / name, out / name)
