"""One way in: `load_fusion("dar")` for a built-in, `load_fusion(folder)` for a checkpoint."""

from __future__ import annotations

from pathlib import Path

from fusion.base import Fusion, read_config
from fusion.static import DAR, Add, TextOnly

FUSIONS: dict[str, type[Fusion]] = {"text": TextOnly, "dar": DAR, "add": Add}


def load_fusion(name_or_folder: str | Path) -> Fusion:
    """A built-in fusion by name, or any fusion saved with `save_pretrained` by its folder."""
    key = str(name_or_folder)
    if key in FUSIONS:
        return FUSIONS[key]()
    if not Path(key).expanduser().is_dir():
        raise ValueError(f"unknown fusion {key!r}: give one of {sorted(FUSIONS)} or a folder "
                         "saved with Fusion.save_pretrained")
    kind = read_config(Path(key).expanduser()).get("kind")
    if kind not in FUSIONS:
        raise ValueError(f"the fusion checkpoint at {key} is of kind {kind!r}, which this "
                         f"version does not know (known: {sorted(FUSIONS)})")
    return FUSIONS[kind].from_pretrained(Path(key).expanduser())
