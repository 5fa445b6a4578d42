"""One way in: `load_fusion("dar")` for a built-in, `load_fusion(folder)` for a checkpoint."""

from __future__ import annotations

from pathlib import Path

from fusion.adafuse import ADaFuSE
from fusion.base import Fusion, read_config
from fusion.static import DAR, Add, TextOnly

BUILT_IN: dict[str, type[Fusion]] = {"text": TextOnly, "dar": DAR, "add": Add}
FUSIONS: dict[str, type[Fusion]] = {**BUILT_IN, "adafuse": ADaFuSE}  # checkpoint kinds
AUTO = "auto"  # a profile's fusion: the learned checkpoint for its encoder if one exists


def find_checkpoint(encoder: str, folders: list[Path]) -> Path | None:
    """The first ADaFuSE checkpoint directly under `folders` trained for `encoder`."""
    for folder in folders:
        for config in sorted(Path(folder).glob("*/fusion_config.json")):
            try:
                cfg = read_config(config.parent)
            except (OSError, ValueError):
                continue  # a broken folder is not a reason to fail a search
            if cfg.get("kind") == "adafuse" and cfg.get("encoder") == encoder:
                return config.parent
    return None


def load_fusion(name_or_folder: str | Path) -> Fusion:
    """A built-in fusion by name, or any fusion saved with `save_pretrained` by its folder."""
    key = str(name_or_folder)
    if key in BUILT_IN:
        return BUILT_IN[key]()
    if not Path(key).expanduser().is_dir():
        raise ValueError(f"unknown fusion {key!r}: give one of {sorted(BUILT_IN)} or a folder "
                         "saved with Fusion.save_pretrained")
    kind = read_config(Path(key).expanduser()).get("kind")
    if kind not in FUSIONS:
        raise ValueError(f"the fusion checkpoint at {key} is of kind {kind!r}, which this "
                         f"version does not know (known: {sorted(FUSIONS)})")
    return FUSIONS[kind].from_pretrained(Path(key).expanduser())
