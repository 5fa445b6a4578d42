"""Result images as small thumbnails, decoded once and kept in memory.

The UI never hands Gradio a gallery file path: it hands a thumbnail of an image the engine
returned. So Gradio serves indexed images only (nothing else is reachable, no
`allowed_paths` needed, whatever the number of folders), and its file cache grows by a few
kilobytes per result instead of a copy of every original photo.
"""

from __future__ import annotations

from functools import lru_cache

from PIL import Image, ImageDraw

from retrieval.gallery import UnreadableImage, load_image

SIDE = 256  # pixels on the longer side: sharp in a 4-column gallery, small to send


@lru_cache(maxsize=1024)
def thumbnail(path: str, side: int = SIDE) -> Image.Image:
    """A copy of the image at `path` no larger than side x side; a labelled placeholder if
    the file has gone or cannot be read since it was indexed."""
    try:
        return load_image(path, max_side=side)
    except UnreadableImage as e:
        return placeholder(side, f"cannot show:\n{str(e)[:40]}")


def placeholder(side: int, text: str) -> Image.Image:
    image = Image.new("RGB", (side, side), (235, 235, 235))
    ImageDraw.Draw(image).multiline_text((10, side // 2 - 12), text, fill=(90, 90, 90))
    return image
