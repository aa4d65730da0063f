"""Mirror-written digits (as children often write them): MNIST digits flipped left to right, enlarged to the Draw
canvas's 280 px, white on black. A style MNIST lacks: the shipped Model3 reads about a third of them right
(2, 3, 5, 6, 7 and 9 hardly ever). For the fine-tuning test and the README's figures.

    python -m tests.mirror_digits DIR --split train --per-digit 30   # an ImageFolder: DIR/<digit>/<n>.png
    python -m tests.mirror_digits DIR --split test --per-digit 50    # held out: other writers (MNIST's test split)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from core.data import FILES, data_root, raw_dir, read_idx

SCALE = 10  # 28 px -> 280 px, the canvas's size


def mirrored(split: str, per_digit: int, root: str | None = None, skip: int = 0) -> list[tuple[int, Image.Image]]:
    """(digit, picture) pairs: the first `per_digit` images of each digit in MNIST's `split` (after skipping
    `skip` images), mirrored and enlarged."""
    raw = raw_dir(data_root(root))
    images = read_idx(raw / FILES[split, "images"], "images").numpy()[skip:]
    labels = read_idx(raw / FILES[split, "labels"], "labels").numpy()[skip:]
    out = []
    for d in range(10):
        for i in np.flatnonzero(labels == d)[:per_digit]:
            big = Image.fromarray(images[i][:, ::-1].copy()).resize((28 * SCALE, 28 * SCALE), Image.BILINEAR)
            out.append((d, big))
    return out


def write_folder(out: Path, split: str, per_digit: int, root: str | None = None, skip: int = 0) -> Path:
    """An ImageFolder of mirrored digits: out/<digit>/<n>.png."""
    for n, (d, picture) in enumerate(mirrored(split, per_digit, root, skip)):
        (out / str(d)).mkdir(parents=True, exist_ok=True)
        picture.save(out / str(d) / f"{split}-{n:04d}.png")
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.mirror_digits", description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--per-digit", type=int, default=30)
    p.add_argument("--skip", type=int, default=50_000, help="start this far into the split (default: past the "
                   "images a --train-limit run mixes in)")
    p.add_argument("--data", default=None, help="MNIST root (default: $MNIST_ROOT, else ./data)")
    args = p.parse_args()
    write_folder(args.out, args.split, args.per_digit, args.data, args.skip if args.split == "train" else 0)
    print(f"wrote {10 * args.per_digit} mirrored {args.split} digits to {args.out}")


if __name__ == "__main__":
    main()
