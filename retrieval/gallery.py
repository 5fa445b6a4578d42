"""Gallery ingestion: find images under a folder and load them without ever crashing.

A broken file is a fact to report, not a reason to stop: loading returns the images that
decoded and a list of (path, reason) for those that did not.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def find_images(folder: str | Path) -> list[Path]:
    """Image files under `folder`, recursively, in a stable (sorted) order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"gallery folder {folder} does not exist or is not a folder")
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_image(path: str | Path) -> Image.Image:
    """Decode fully (so truncation shows up here, not later) and convert to RGB."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P", "PA"):
                # Composite transparency on white rather than letting it turn black.
                rgba = im.convert("RGBA")
                bg = Image.new("RGB", rgba.size, "white")
                bg.paste(rgba, mask=rgba.getchannel("A"))
                return bg
            return im.convert("RGB")


@dataclass
class Batch:
    paths: list[str] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def iter_batches(paths: list[Path], batch_size: int) -> Iterator[Batch]:
    """Batches of decoded images; undecodable files land in `skipped` with the reason."""
    for start in range(0, len(paths), batch_size):
        batch = Batch()
        for path in paths[start:start + batch_size]:
            try:
                batch.images.append(load_image(path))
                batch.paths.append(str(path))
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
                    Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                batch.skipped.append((str(path), f"{type(e).__name__}: {e}"))
        yield batch
