"""Fuzz the upload path: damaged PNG, JPEG, WebP, BMP and GIF files must each give a one-line ValueError.

    python -m tests.fuzz_uploads --per-format 5000

Mutates valid pictures of each format the Draw page takes (bit flips, truncation, garbage over or into a
chunk, a repeated span), feeds each to decode_picture (and what decodes to read_picture, as the page does),
and counts crashes (anything but a one-line ValueError), the worst time and the worst peak memory of one file.
Not collected by pytest; tests/test_uploads.py runs a small bounded round.
"""

from __future__ import annotations

import argparse
import io
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.predict import UPLOAD_FORMATS, EmptyImageError, decode_picture, read_picture

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")  # writing "5" resets the peak RSS (Linux)


def _rss(name: str) -> int:
    """VmRSS or VmHWM (peak) of this process, in bytes; 0 where /proc is missing."""
    if not STATUS.exists():
        return 0
    return int(re.search(rf"{name}:\s+(\d+) kB", STATUS.read_text()).group(1)) * 1024


def seed_pictures(fmt: str) -> list[bytes]:
    """A few valid files of one format: a digit in grey, in colour, with transparency, with an EXIF rotation."""
    img = Image.new("L", (96, 96), 0)
    ImageDraw.Draw(img).line([(20, 15), (75, 15), (40, 85)], fill=255, width=9)
    rgba = Image.merge("RGBA", [img, img, img, img])
    exif = Image.Exif()
    exif[0x0112] = 6
    forms: list[tuple[Image.Image, dict]] = [(img, {}), (img.convert("RGB"), {})]
    if fmt in ("PNG", "WEBP"):
        forms += [(rgba, {}), (img.convert("RGB"), {"exif": exif})]
    if fmt == "JPEG":
        forms += [(img.convert("RGB"), {"exif": exif}), (img, {"quality": 20, "progressive": True})]
    if fmt in ("PNG", "GIF", "BMP"):
        forms += [(img.convert("P"), {})]
    if fmt == "PNG":
        forms += [(Image.fromarray(np.asarray(img).astype(np.uint16) * 257), {})]
    files = []
    for picture, options in forms:
        buf = io.BytesIO()
        picture.save(buf, fmt, **options)
        files.append(buf.getvalue())
    return files


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One damaged copy of a file: bit flips, a truncation, garbage over or into a span, or a repeated span."""
    b = bytearray(data)
    kind = rng.choice(["flip", "flip", "truncate", "overwrite", "insert", "repeat"])
    if kind == "flip":
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del b[rng.randrange(1, len(b)) :]
    elif kind == "overwrite":
        i, n = rng.randrange(len(b)), rng.randint(1, 64)
        b[i : i + n] = rng.randbytes(min(n, len(b) - i))
    elif kind == "insert":
        i = rng.randrange(len(b))
        b[i:i] = rng.randbytes(rng.randint(1, 64))
    else:
        i = rng.randrange(len(b))
        b[i:i] = b[i : i + rng.randint(1, 256)]
    return bytes(b)


@dataclass
class FuzzReport:
    files: int = 0
    read: int = 0  # decoded anyway, and a digit read from it
    blank: int = 0  # decoded anyway, to a picture without ink
    refused: Counter = field(default_factory=Counter)  # one-line ValueError messages, digits masked
    crashes: list[tuple[str, str]] = field(default_factory=list)  # (format, "Type: message")
    worst_seconds: float = 0.0  # CPU time of one file
    worst_peak_bytes: int = 0  # over the RSS before the call


def fuzz(per_format: int, seed: int = 0, formats=UPLOAD_FORMATS) -> FuzzReport:
    """Feed per_format damaged files of each format to the upload path and tally what happened."""
    rng = random.Random(seed)
    report = FuzzReport()
    for fmt in formats:
        seeds = seed_pictures(fmt)
        for _ in range(per_format):
            data = mutate(rng.choice(seeds), rng)
            if CLEAR_REFS.exists():
                CLEAR_REFS.write_text("5")
            before = _rss("VmRSS")
            start = time.process_time()  # CPU time: wall time on a shared machine says little
            try:
                read_picture(decode_picture(data))
                report.read += 1
            except EmptyImageError:
                report.blank += 1
            except ValueError as e:
                if "\n" in str(e) or not str(e):
                    report.crashes.append((fmt, f"a message of {len(str(e).splitlines())} lines: {e!r}"))
                else:
                    report.refused[re.sub(r"\d+", "N", str(e))] += 1
            except Exception as e:  # noqa: BLE001 - counting every other failure is the point
                report.crashes.append((fmt, f"{type(e).__name__}: {e}"))
            report.worst_seconds = max(report.worst_seconds, time.process_time() - start)
            report.worst_peak_bytes = max(report.worst_peak_bytes, _rss("VmHWM") - before)
            report.files += 1
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--per-format", type=int, default=5000, help="damaged files per format")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    r = fuzz(args.per_format, args.seed)
    print(f"{r.files} damaged files ({', '.join(UPLOAD_FORMATS)}) in {time.perf_counter() - start:.0f} s: "
          f"{r.read} read, {r.blank} blank, {sum(r.refused.values())} refused with a one-line ValueError, {len(r.crashes)} crashes")
    print(f"worst file: {r.worst_seconds * 1e3:.0f} ms of CPU, peak memory +{r.worst_peak_bytes / 2**20:.1f} MB")
    for message, n in r.refused.most_common(12):
        print(f"  {n:6d}  {message}")
    for (fmt, crash), n in Counter(r.crashes).most_common(20):
        print(f"  {n:6d}  crash ({fmt}): {crash}")


if __name__ == "__main__":
    main()
