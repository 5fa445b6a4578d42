"""Result images as small thumbnail files, written once per image and served as they are.

The UI never hands Gradio an original file: it hands a thumbnail in one folder that Gradio
serves statically. So only indexed images are reachable, whatever folders they came from (no
`allowed_paths`), and a turn's results cost a dictionary lookup each: no copy into Gradio's
cache and no WebP encode per turn (~4 ms an image, which concurrent sessions queued on).
A thumbnail is keyed by the original's path, size and modification time, so an edited image
gets a fresh one; the folder persists across restarts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path

import gradio as gr
from PIL import Image, ImageDraw

from retrieval.gallery import UnreadableImage, load_image

SIDE = 256  # pixels on the longer side: sharp in a 4-column gallery, small to send
SERVED_AS_IS = {"PNG", "JPEG", "WEBP"}  # small files in these formats are copied, not re-encoded
EXIF_ORIENTATION = 0x0112


class Thumbnails:
    """`thumbnails(path)` -> the path of a thumbnail file for the image at `path`, or of a
    labelled placeholder if the image has gone or cannot be read since it was indexed."""

    def __init__(self, folder: Path, side: int = SIDE):
        self.folder, self.side = Path(folder), side
        self.folder.mkdir(parents=True, exist_ok=True)
        gr.set_static_paths([self.folder])  # served in place; adds to earlier folders
        self._known: dict[tuple, str] = {}
        self._lock = threading.Lock()  # concurrent turns may ask for the same new image

    def __call__(self, path: str) -> str:
        try:
            st = os.stat(path)
        except OSError:
            return self._placeholder("gone", "cannot show:\nthe file has gone")
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
        if (known := self._known.get(key)) is None:
            with self._lock:
                known = self._known.get(key) or self._write(key)
                self._known[key] = known
        return known

    def _write(self, key: tuple) -> str:
        path = key[0]
        stem = hashlib.sha1(repr(key).encode()).hexdigest()[:24]
        try:
            with Image.open(path) as im:  # the header only
                as_is = (im.format in SERVED_AS_IS and max(im.size) <= self.side
                         and im.getexif().get(EXIF_ORIENTATION, 1) == 1)
                suffix = f".{im.format.lower()}"
        except Exception:  # unreadable: load_image below says why
            as_is = False
        if as_is:
            target = self.folder / (stem + suffix)
            if not target.exists():
                _atomically(target, lambda tmp: shutil.copyfile(path, tmp))
            return str(target)
        target = self.folder / f"{stem}.webp"
        if target.exists():
            return str(target)
        try:
            image = load_image(path, max_side=self.side)
        except UnreadableImage as e:
            return self._placeholder(stem, f"cannot show:\n{str(e)[:40]}")
        _atomically(target, lambda tmp: image.save(tmp, format="WEBP", quality=85))
        return str(target)

    def _placeholder(self, stem: str, text: str) -> str:
        target = self.folder / f"placeholder-{stem}.png"
        if not target.exists():
            image = Image.new("RGB", (self.side, self.side), (235, 235, 235))
            ImageDraw.Draw(image).multiline_text((10, self.side // 2 - 12), text,
                                                 fill=(90, 90, 90))
            _atomically(target, lambda tmp: image.save(tmp, format="PNG"))
        return str(target)


def _atomically(target: Path, write) -> None:
    """Write via a temporary name, so a reader (or a crash) never sees half a file."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
    write(tmp)
    os.replace(tmp, target)
