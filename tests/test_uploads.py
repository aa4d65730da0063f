"""Uploads on the Draw page: damaged, foreign and oversized files get a one-line message, never a crash."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.predict import DECODED_SIDE, MAX_WEBP_SIDE, decode_picture, read_picture

ROOT = Path(__file__).resolve().parent.parent


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def seven(side: int = 96) -> Image.Image:
    img = Image.new("L", (side, side), 0)
    ImageDraw.Draw(img).line([(side * 0.2, side * 0.15), (side * 0.8, side * 0.15), (side * 0.4, side * 0.9)], fill=255, width=side // 10)
    return img


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def with_size(png: bytes, width: int, height: int) -> bytes:
    """A PNG whose header claims another size (checksum fixed): the file stays tiny, its pixels would not."""
    ihdr = struct.pack(">II", width, height) + png[24:29]
    return png[:8] + chunk(b"IHDR", ihdr) + png[33:]


def refusal(data: bytes) -> str:
    with pytest.raises(ValueError) as info:
        decode_picture(data)
    message = str(info.value)
    assert message and "\n" not in message, f"not a one-line message: {message!r}"
    return message


def test_a_broken_png_gets_a_one_line_message():
    """Pixel data in two chunks, the second one's name garbled: Pillow raises SyntaxError("broken PNG file")."""
    png = encode(seven(), "PNG")
    at = png.index(b"IDAT") - 4
    n = struct.unpack(">I", png[at : at + 4])[0]
    pixels = png[at + 8 : at + 8 + n]
    broken = png[:at] + chunk(b"IDAT", pixels[: n // 2]) + chunk(b"ID\x00T", pixels[n // 2 :]) + png[at + 12 + n :]
    assert "could not be decoded" in refusal(broken)


def test_a_webp_with_broken_exif_gets_a_one_line_message():
    webp = encode(seven().convert("RGB"), "WEBP", exif=b"Exif\x00\x00not a TIFF header")
    assert "could not be decoded" in refusal(webp)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\nnewpath 2 2 moveto 14 14 lineto stroke\nshowpage\n%%EOF\n"


@pytest.mark.parametrize("fmt", ["EPS", "AVIF", "JPEG2000", "DDS", "TIFF", "ICO", "PPM", "TGA"])
def test_formats_the_upload_box_does_not_name_are_not_opened(fmt):
    if fmt == "EPS":
        data = EPS  # opening it for real would run Ghostscript
    else:
        try:
            data = encode(seven().convert("RGB"), fmt)
        except (KeyError, OSError) as e:
            pytest.skip(f"this Pillow cannot write {fmt}: {e}")
    assert "not a readable picture" in refusal(data)


def test_a_decompression_bomb_is_refused_as_too_large():
    png = encode(Image.new("L", (16, 16)), "PNG")
    assert "too large" in refusal(with_size(png, 30_000, 30_000))  # past Pillow's bomb limit
    assert "too large" in refusal(with_size(png, 5_000, 5_000))  # past our side limit
    assert "too large" in refusal(encode(Image.new("RGBA", (MAX_WEBP_SIDE + 1, 8)), "WEBP", lossless=True))  # Pillow decodes a WebP whole


def test_normal_pictures_are_decoded_at_full_size():
    picture = decode_picture(encode(seven(DECODED_SIDE), "PNG"))
    assert picture.shape == (DECODED_SIDE, DECODED_SIDE)
    assert np.array_equal(picture, np.asarray(seven(DECODED_SIDE)))


@pytest.mark.parametrize("fmt, mode", [("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"), ("JPEG", "RGB"), ("WEBP", "RGBA"), ("GIF", "P")])
def test_a_large_picture_is_shrunk_as_it_is_decoded_and_still_read(fmt, mode):
    big = seven(3000 if fmt != "WEBP" else MAX_WEBP_SIDE)
    if mode == "RGBA":  # white strokes on a transparent canvas
        img = Image.merge("RGBA", [Image.new("L", big.size, 255)] * 3 + [big])
    elif mode == "I;16":
        img = Image.fromarray(np.asarray(big).astype(np.uint16) * 257)
    else:
        img = big.convert(mode)
    picture = decode_picture(encode(img, fmt))
    assert max(picture.shape[:2]) <= DECODED_SIDE
    small = decode_picture(encode(seven(), "PNG"))
    assert read_picture(picture).x.sub(read_picture(small).x).abs().max() < 1.0  # the same 7, in normalised units


def test_an_exif_rotation_survives_the_shrinking():
    tall = Image.new("L", (1200, 2400), 0)
    tall.paste(255, (100, 100, 1100, 300))  # a bar across the top
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: the bar on the right
    picture = decode_picture(encode(tall, "JPEG", exif=exif, quality=90))
    assert picture.shape == (400, 800)  # shrunk 3 times, then turned
    assert picture[:, 710:760].mean() > 200 and picture[:, :680].max() < 50


PEAK_SCRIPT = """
import json, re, sys, time
from pathlib import Path
from core.predict import decode_picture, read_picture

def rss(name):
    return int(re.search(name + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

data = Path(sys.argv[1]).read_bytes()
read_picture(decode_picture(Path(sys.argv[2]).read_bytes()))  # warm up: lazy imports, allocator pools
Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS
before, start = rss("VmRSS"), time.process_time()  # CPU time: wall time on a busy machine says little
picture = decode_picture(data)
decoded = time.process_time() - start
read_picture(picture)
print(json.dumps({"peak_mb": (rss("VmHWM") - before) / 2**20, "decode_s": decoded,
                  "total_s": time.process_time() - start, "shape": picture.shape}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak memory is read from Linux's /proc")
def test_the_largest_allowed_upload_is_cheap(tmp_path):
    """A 4000x4000 transparent PNG holding a digit: ~80 KB, within the 2 MB upload limit."""
    side = 4000
    canvas = Image.new("L", (side, side), 0)
    ImageDraw.Draw(canvas).line([(900, 600), (3100, 600), (1800, 3500)], fill=255, width=300)
    png = encode(Image.merge("RGBA", [Image.new("L", (side, side), 255)] * 3 + [canvas]), "PNG")
    assert len(png) < 2 * 2**20
    (tmp_path / "big.png").write_bytes(png)
    (tmp_path / "small.png").write_bytes(encode(seven(), "PNG"))
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, tmp_path / "big.png", tmp_path / "small.png"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    got = json.loads(out)
    print(f"{side}x{side} transparent PNG of {len(png) / 1e3:.0f} KB: decoded in {got['decode_s']:.2f} CPU s, "
          f"read in {got['total_s']:.2f} CPU s, peak memory +{got['peak_mb']:.0f} MB, decoded to {got['shape']}")
    assert max(got["shape"][:2]) <= DECODED_SIDE
    assert got["peak_mb"] < 100


def test_a_small_fuzzing_round_gives_no_crash():
    from tests.fuzz_uploads import fuzz

    report = fuzz(per_format=40, seed=1)
    assert report.files == 200
    assert not report.crashes, report.crashes[:5]
