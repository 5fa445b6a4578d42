"""Loading gallery images: huge files decode downscaled, every skip says why in plain words."""

import errno
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from retrieval.gallery import (
    MAX_SIDE,
    UnreadableImage,
    decode_downscaled,
    describe_failure,
    find_images,
    iter_batches,
    load_image,
)
from retrieval.ingest import index_folder
from world.render import render
from world.scene import sample_scene

# 187.5 Mpx: past Pillow's hard limit (~179 Mpx), not just its warning (~89 Mpx). Mode "L"
# with flat content saves in ~0.7 s and loads in ~0.5 s.
HUGE = (15000, 12500)


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory):
    """Clip art: the left third black, the rest white."""
    path = tmp_path_factory.mktemp("huge") / "poster.png"
    im = Image.new("L", HUGE, 255)
    ImageDraw.Draw(im).rectangle((0, 0, HUGE[0] // 3 - 1, HUGE[1] - 1), fill=0)
    im.save(path, compress_level=1)
    return path


def png_header_only(path, width, height):
    """A PNG whose header claims `width` x `height`, with almost no pixel data behind it."""
    def chunk(kind, data):
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b""))
    return path


def test_huge_png_loads_downscaled_with_its_aspect_and_content(huge_png):
    guard = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = load_image(huge_png)
    assert im.mode == "RGB" and im.size == (MAX_SIDE, 853)  # 15000x12500 scaled to 1024 wide
    row = np.asarray(im.convert("L"))[im.height // 2]
    assert abs((row < 128).sum() - MAX_SIDE / 3) <= 2  # still the left third black
    assert row[:300].max() < 10 and row[400:].min() > 245
    assert Image.MAX_IMAGE_PIXELS == guard  # Pillow's own guard is back as it was


def test_huge_png_is_indexed(huge_png, tmp_path, random_world_encoder):
    index, report = index_folder(huge_png.parent, random_world_encoder, tmp_path / "g.itirx")
    assert report.added == 1 and not report.skipped and index.paths == [str(huge_png.resolve())]


def test_jpeg_decodes_at_reduced_scale(tmp_path):
    path = tmp_path / "photo.jpg"
    im = Image.new("RGB", (4000, 3000), "blue")
    ImageDraw.Draw(im).rectangle((0, 0, 1999, 2999), fill="red")
    im.save(path, quality=90)
    with Image.open(path) as jpeg:
        small = decode_downscaled(jpeg, max_side=256)
        # The decoder itself produced 1/8 scale: the full 12 Mpx never existed in memory.
        assert jpeg.size == (500, 375)
    assert small.size == (256, 192)
    loaded = np.asarray(load_image(path, max_side=256)).astype(int)
    assert loaded.shape == (192, 256, 3)
    assert np.abs(loaded[96, 60] - (255, 0, 0)).max() < 20
    assert np.abs(loaded[96, 200] - (0, 0, 255)).max() < 20


def test_bilevel_art_is_averaged_not_decimated(tmp_path):
    """Nearest-neighbour shrinking (Pillow's only choice for mode "1") would drop thin lines."""
    path = tmp_path / "lines.png"
    im = Image.new("1", (1000, 1000), 1)
    draw = ImageDraw.Draw(im)
    for x in range(0, 1000, 10):
        draw.line((x, 0, x, 999), fill=0)
    im.save(path)
    grey = np.asarray(load_image(path, max_side=100).convert("L"))
    assert grey.shape == (100, 100)
    assert 200 < grey.min() and grey.max() < 250  # one black column in ten, everywhere


def palette(transparent=False):
    im = Image.new("P", (300, 200), 1)
    im.putpalette([0, 0, 0, 200, 40, 40])
    if transparent:
        im.info["transparency"] = 1
    return im


@pytest.mark.parametrize("name, make, rgb", [
    ("bilevel.png", lambda: Image.new("1", (300, 200), 1), (255, 255, 255)),
    ("grey.png", lambda: Image.new("L", (300, 200), 90), (90, 90, 90)),
    ("grey16.png", lambda: Image.fromarray(np.full((200, 300), 60, np.uint16)), (60, 60, 60)),
    ("palette.png", palette, (200, 40, 40)),
    ("palette-clear.png", lambda: palette(transparent=True), (255, 255, 255)),
    ("half-clear.png", lambda: Image.new("LA", (300, 200), (0, 128)), (127, 127, 127)),
    ("rgba.webp", lambda: Image.new("RGBA", (300, 200), (0, 0, 255, 255)), (0, 0, 255)),
    ("cmyk.jpg", lambda: Image.new("CMYK", (300, 200), (0, 255, 255, 0)), (255, 0, 0)),
    ("rgb.bmp", lambda: Image.new("RGB", (300, 200), (10, 200, 30)), (10, 200, 30)),
])
def test_every_mode_shrinks_to_rgb(tmp_path, name, make, rgb):
    make().save(tmp_path / name)
    im = load_image(tmp_path / name, max_side=100)
    assert im.mode == "RGB" and im.size == (100, 67)
    assert np.abs(np.asarray(im)[33, 50].astype(int) - rgb).max() <= 3


def test_images_over_the_cap_are_refused_before_decoding(tmp_path):
    # The header claims 900 Mpx; only the header check can tell, there is no data to decode.
    with pytest.raises(UnreadableImage) as e:
        load_image(png_header_only(tmp_path / "claims-huge.png", 30000, 30000))
    assert str(e.value) == "image too large: 30000x30000 (900 Mpx) is over the 500 Mpx limit"

    render(sample_scene(0), 64).resize((300, 200)).save(tmp_path / "small.png")
    with pytest.raises(UnreadableImage, match=r"300x200 \(0.06 Mpx\) is over the 0.05 Mpx"):
        load_image(tmp_path / "small.png", max_pixels=50_000)
    batch, = iter_batches([tmp_path / "small.png"], 4, max_pixels=50_000)
    assert not batch.images and batch.skipped == [(
        str(tmp_path / "small.png"),
        "image too large: 300x200 (0.06 Mpx) is over the 0.05 Mpx limit")]


def test_every_skip_says_why_in_plain_words(tmp_path):
    render(sample_scene(0), 64).save(tmp_path / "good.png")
    good = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "notes.jpg").write_text("this is not a picture")
    (tmp_path / "empty.webp").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()  # find_images passes over it; a caller might not
    paths = find_images(tmp_path) + [tmp_path / "folder.png"]
    batches = list(iter_batches(paths, 2))
    assert [p for b in batches for p in b.paths] == [str(tmp_path / "good.png")]
    reasons = {os.path.basename(p): r for b in batches for p, r in b.skipped}
    assert reasons == {
        "cut.png": "truncated or corrupt image data: image file is truncated",
        "notes.jpg": "not an image (cannot identify image file)",
        "empty.webp": "empty file (0 bytes)",
        "folder.png": "unreadable: is a directory",
    }


def test_unreadable_file_is_reported_as_permission_denied(tmp_path):
    path = tmp_path / "secret.png"
    render(sample_scene(0), 32).save(path)
    path.chmod(0)
    try:
        path.open("rb").close()
        pytest.skip("this user (root?) reads files whatever their permissions")
    except PermissionError:
        pass
    with pytest.raises(UnreadableImage, match="^unreadable: permission denied$"):
        load_image(path)


def test_permission_error_in_plain_words():
    # The same as the test above for when it cannot run (as root, nothing is unreadable).
    denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES), "secret.png")
    assert describe_failure(denied) == "unreadable: permission denied"


def test_photos_are_loaded_upright_by_their_exif_orientation(tmp_path):
    image = Image.new("RGB", (300, 100), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to display": a portrait photo stored sideways
    image.save(tmp_path / "phone.jpg", exif=exif)
    assert load_image(tmp_path / "phone.jpg").size == (100, 300)
