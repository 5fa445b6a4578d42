"""Gallery ingestion: find images under a folder and load them without ever crashing.

A broken file is a fact to report, not a reason to stop: loading returns the images that
decoded and a list of (path, reason) for those that did not, the reason in plain words.

Large images are fine: the size is read from the header and checked against our own pixel cap
before any pixel is decoded, and every image comes back with its longer side at most
`MAX_SIDE` (the encoders read a few hundred pixels at most).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
MAX_SIDE = 1024  # longer side of a loaded image: ample for encoders that read ~224 px
MAX_PIXELS = 500_000_000  # refuse images over this many pixels (a 22000x22000 poster is fine)


class UnreadableImage(ValueError):
    """A file that could not be loaded as an image; `str()` is the reason in plain words."""


def find_images(folder: str | Path) -> list[Path]:
    """Image files under `folder`, recursively, in a stable (sorted) order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"gallery folder {folder} does not exist or is not a folder")
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_image(path: str | Path, max_side: int = MAX_SIDE,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode `path` to RGB, its longer side at most `max_side`.

    Images over `max_pixels` (by their header) are refused before decoding. Any failure raises
    UnreadableImage saying why: too large, not an image, corrupt, unreadable.
    """
    try:
        if Path(path).stat().st_size == 0:
            raise UnreadableImage("empty file (0 bytes)")
        with _pillow_pixel_guard_lifted():
            im = Image.open(path)  # reads the header only
        with im:
            check_pixels(im.size, max_pixels)
            # Phones store photos sideways with an EXIF orientation tag: upright them, so
            # the encoder sees (and the person is shown) what the camera saw.
            return _flatten(ImageOps.exif_transpose(decode_downscaled(im, max_side)))
    except UnreadableImage:
        raise
    except Exception as e:
        # Pillow's decoders raise a zoo of types on bad input (OSError, SyntaxError,
        # ValueError, EOFError, struct.error, ...): each means this file is broken, not us.
        raise UnreadableImage(describe_failure(e)) from e


def check_pixels(size: tuple[int, int], max_pixels: int = MAX_PIXELS) -> None:
    """Raise UnreadableImage if an image of `size` is over `max_pixels`."""
    w, h = size
    if w * h > max_pixels:
        raise UnreadableImage(f"image too large: {w}x{h} ({_mpx(w * h)} Mpx) is over the "
                              f"{_mpx(max_pixels)} Mpx limit")


def decode_downscaled(im: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """Decode an opened, not yet loaded image with its longer side at most `max_side`.

    All decoding happens here, so truncation shows up now, not later. JPEGs decode at 1/2,
    1/4 or 1/8 scale in the DCT domain (`draft`), so a huge photo never exists at full size in
    memory; other formats decode fully and shrink at once.
    """
    target = fitted_size(im.size, max_side)
    if target != im.size:
        # A no-op for formats without reduced-scale decoding; for JPEG it picks the smallest
        # DCT scale whose result is still at least `target`.
        im.draft(None, target)
    im.load()
    if im.size == target:
        return im
    # Bilevel and palette pixels cannot be averaged (Pillow would fall back to nearest
    # neighbour and drop thin lines) and 16-bit ones cannot be shrunk at all: convert first.
    if im.mode == "1":
        im = im.convert("L")  # no bigger: Pillow keeps "1" at a byte a pixel too
    elif im.mode in ("P", "PA") or im.mode.startswith("I;16"):
        im = _flatten(im)  # to the RGB it ends as anyway
    return im.resize(target, Image.Resampling.BICUBIC, reducing_gap=2.0)


def fitted_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """`size` scaled down (never up) so its longer side is `max_side`, aspect ratio kept."""
    w, h = size
    if max(w, h) <= max_side:
        return size
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def describe_failure(e: BaseException) -> str:
    """Why a file could not be loaded, in words a user understands."""
    if isinstance(e, UnidentifiedImageError):
        return "not an image (cannot identify image file)"
    if isinstance(e, PermissionError):
        return "unreadable: permission denied"
    if isinstance(e, FileNotFoundError):
        return "unreadable: file not found (moved or deleted while indexing?)"
    if isinstance(e, OSError) and e.errno is not None:  # the OS refused, not the decoder
        return f"unreadable: {(e.strerror or str(e)).lower()}"
    if isinstance(e, MemoryError):
        return "not enough memory to decode it"
    if isinstance(e, (OSError, SyntaxError, ValueError, EOFError)):
        return f"truncated or corrupt image data: {e}"
    return f"could not decode: {type(e).__name__}: {e}"


@dataclass
class Batch:
    paths: list[str] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def iter_batches(paths: list[Path], batch_size: int, *, max_side: int = MAX_SIDE,
                 max_pixels: int = MAX_PIXELS) -> Iterator[Batch]:
    """Batches of decoded images; files that fail land in `skipped` as (path, reason)."""
    for start in range(0, len(paths), batch_size):
        batch = Batch()
        for path in paths[start:start + batch_size]:
            try:
                batch.images.append(load_image(path, max_side, max_pixels))
                batch.paths.append(str(path))
            except UnreadableImage as e:
                batch.skipped.append((str(path), str(e)))
        yield batch


_pixel_guard_lock = threading.Lock()


@contextmanager
def _pillow_pixel_guard_lifted() -> Iterator[None]:
    """Pillow's global decompression-bomb guard off while opening (reading a header).

    Our own `max_pixels` check replaces it. Pillow refuses to even open images over ~179 Mpx,
    so it must be lifted to read their size; the lock keeps two loaders from restoring each
    other's value, and the guard is back as it was for the rest of the process.
    """
    with _pixel_guard_lock:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _flatten(im: Image.Image) -> Image.Image:
    """RGB, with transparency composited on white rather than left to turn black."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGB", rgba.size, "white")
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return im.convert("RGB")


def _mpx(pixels: int) -> str:
    """Megapixels for messages: '900', '188', '2.5', '0.06'."""
    m = pixels / 1e6
    return f"{m:.0f}" if m >= 10 else f"{m:.2g}"
