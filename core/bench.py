"""Benchmark: our engine against the plain torchvision loop the seed used, on the same model and batches.

    python -m core.bench                           # speed ratio, time to 99.4%, peak memory
    python -m core.bench --batches 5 --skip-time-to-target   # a smoke test in seconds

Both sides train Model3 (Dropout 0.1, batch 128, SGD lr 0.01 momentum 0.9, rotation +-7) for the same
number of batches. Ours goes through `Trainer` (tensors in memory, whole-batch augmentation, FastDropout);
the seed's is DataLoader(num_workers=0) + RandomRotation + ToTensor + Normalize over torchvision's
MNIST files, with the model's dropout layers as plain nn.Dropout, as the seed wrote them.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.config import TrainConfig, recipe
from core.data import MEAN, STD, data_root, load_mnist
from core.models import FastDropout, build_model
from core.train import Trainer

TARGET = 99.4  # test accuracy (%) for the time-to-target measurement


def engine_images_per_second(batches: int, data_dir: str | None) -> float:
    """Images/s of `Trainer` training Model3 (seed recipe) for `batches` batches, after one warm-up batch."""
    config = recipe("Model3", "seed", train_limit=128 * (batches + 1))
    trainer = Trainer(config, load_mnist(data_dir))
    timer: dict[str, float] = {}

    def on_batch(done: int, total: int) -> None:
        if done == 1:  # the first batch pays one-off allocation costs; the plain loop gets the same warm-up
            timer["t0"] = time.perf_counter()
        if done == total:
            timer["t1"] = time.perf_counter()

    trainer.train_epoch(0, on_batch=on_batch)
    return 128 * batches / (timer["t1"] - timer["t0"])


def seed_model() -> nn.Module:
    """Model3 as the seed wrote it: our module tree with nn.Dropout where we use FastDropout."""
    model = build_model("Model3")
    for block in model.modules():
        for name, child in block.named_children():
            if isinstance(child, FastDropout):
                setattr(block, name, nn.Dropout(child.p))
    return model


def plain_loop_images_per_second(batches: int, data_dir: str | None) -> float:
    """Images/s of the seed's loop: torchvision DataLoader + transforms, same model, optimizer and batches."""
    from torchvision import datasets, transforms

    torch.manual_seed(1)
    transform = transforms.Compose(
        [transforms.RandomRotation(7), transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))]
    )
    dataset = datasets.MNIST(str(data_root(data_dir)), train=True, download=False, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=128, shuffle=True, num_workers=0)
    model = seed_model().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    t0 = 0.0
    for i, (x, y) in enumerate(loader):
        if i == 1:
            t0 = time.perf_counter()
        loss = F.nll_loss(F.log_softmax(model(x), dim=1), y)  # the seed's log_softmax + NLL
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i == batches:
            break
    return 128 * batches / (time.perf_counter() - t0)


def time_to_target(config: TrainConfig, data_dir: str | None) -> tuple[float | None, int | None, float]:
    """(seconds from start to the first epoch at >= TARGET test accuracy, that epoch, best accuracy)."""
    t0 = time.perf_counter()
    trainer = Trainer(config, load_mnist(data_dir))
    best = 0.0
    for r in trainer.epochs():
        best = max(best, r.test_acc)
        print(f"  epoch {r.epoch:>2}: test {r.test_acc:.2f}%  ({time.perf_counter() - t0:.1f}s since start)", flush=True)
        if r.test_acc >= TARGET:
            return time.perf_counter() - t0, r.epoch, best
    return None, None, best


def peak_memory_mb() -> float:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.bench", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batches", type=int, default=200, help="timed batches per side (batch 128)")
    p.add_argument("--data", default=None, help="MNIST root (default: $MNIST_ROOT, else ./data)")
    p.add_argument("--skip-time-to-target", action="store_true", help="only the speed ratio and memory")
    args = p.parse_args(argv)
    if args.batches < 1:
        p.error("--batches must be >= 1")

    print(f"Model3, batch 128, {args.batches} timed batches each side, {torch.get_num_threads()} threads", flush=True)
    plain = plain_loop_images_per_second(args.batches, args.data)
    print(f"seed loop (DataLoader + transforms): {plain:8.0f} images/s", flush=True)
    ours = engine_images_per_second(args.batches, args.data)
    print(f"our engine (Trainer):                {ours:8.0f} images/s", flush=True)
    print(f"ratio {ours / plain:.2f}x (our engine / seed loop)", flush=True)

    if not args.skip_time_to_target:
        config = recipe("Model3", "reference")
        print(f"time to {TARGET}% test, Model3 reference recipe: {config.to_json()}", flush=True)
        seconds, epoch, best = time_to_target(config, args.data)
        if seconds is None:
            print(f"time to {TARGET}%: not reached in {config.epochs} epochs (best {best:.2f}%)")
        else:
            print(f"time to {TARGET}%: {seconds:.1f}s, at epoch {epoch} ({best:.2f}%)")
    print(f"peak memory (ru_maxrss) {peak_memory_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
