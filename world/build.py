"""Write a split of the world to disk: images, ground truth, and ChatIR-format files.

Layout of OUT: images/<split>-<index>.png, scenes.jsonl (one scene per line: path, seed,
ground truth, full caption, dialog), dialogs.json and corpus.json (ChatIR format, image
paths relative to OUT).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tqdm import tqdm

from world.captions import full_caption
from world.dialogs import make_dialog
from world.render import render
from world.scene import sample_scene, split_seed

DONE = "scenes.jsonl"  # written last: its presence means the folder is complete


def build_split(n: int, split: str, out: str | Path, size: int = 128,
                progress=None) -> Path:
    """Render `n` scenes of `split` into `out`. `progress(done, total)` is called per scene."""
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in tqdm(range(n), desc=f"world {split}", unit="scene"):
        scene = sample_scene(split_seed(split, i))
        rel = f"images/{split}-{i:06d}.png"
        render(scene, size).save(out / rel)
        records.append({"img": rel, "seed": scene.seed, "scene": scene.to_dict(),
                        "caption": full_caption(scene), "dialog": make_dialog(scene)})
        if progress:
            progress(i + 1, n)
    (out / "dialogs.json").write_text(json.dumps(
        [{"img": r["img"], "dialog": r["dialog"]} for r in records], indent=0))
    (out / "corpus.json").write_text(json.dumps([r["img"] for r in records]))
    tmp = out / (DONE + ".tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, out / DONE)
    return out


def read_scenes(folder: str | Path) -> list[dict]:
    path = Path(folder) / DONE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build the split with `itir world build`")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
