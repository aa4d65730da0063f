"""Benchmark: our engine against the seed's torchvision loop and a plain PyTorch loop, same model and batches.

    python -m core.bench                           # speed ratio, time to 99.4%, peak memory
    python -m core.bench --batches 5 --skip-time-to-target   # a smoke test in seconds
    python -m core.bench --profile --batches 50              # where our engine's step time goes
    taskset -c 0 python -m core.bench --parts                # CPU time per part of a step, and per convolution

All sides train Model3 (Dropout 0.1, batch 128, SGD lr 0.01 momentum 0.9, rotation +-7) for the same
number of batches. Ours goes through `Trainer` (tensors in memory, whole-batch augmentation, channels_last,
FastDropout, FastBatchNorm2d); the seed's is DataLoader(num_workers=0) + RandomRotation + ToTensor +
Normalize over torchvision's MNIST files, with torch's own nn.Dropout and nn.BatchNorm2d, as the seed
wrote them; the plain side is the best loop we could write with torch's own layers (`PlainTorchSide`).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.config import TrainConfig, recipe
from core.data import MEAN, STD, augment_batch, data_root, load_mnist
from core.layers import FastBatchNorm2d, FastDropout
from core.models import build_model
from core.runs import RunStore
from core.train import Trainer, keep_freed_memory_for_reuse, pick_device
from core.worker import ProgressReporter

TARGET = 99.4  # test accuracy (%) for the time-to-target measurement


def seed_model() -> nn.Module:
    """Model3 as the seed wrote it: our module tree with torch's nn.Dropout and nn.BatchNorm2d where
    we use FastDropout and FastBatchNorm2d (freshly initialised, as ours are)."""
    model = build_model("Model3")
    for block in model.modules():
        for name, child in block.named_children():
            if isinstance(child, FastDropout):
                setattr(block, name, nn.Dropout(child.p))
            elif isinstance(child, FastBatchNorm2d):
                setattr(block, name, nn.BatchNorm2d(child.num_features))
    return model


class EngineSide:
    """Our engine: `Trainer.train_epoch` over an in-memory slice of `chunk` batches, called once per round.
    With `record`, as a training process runs it: progress, step points and the stop flag go through a
    RunStore (a temporary SQLite file) every POLL_SECONDS, as core.worker does."""

    def __init__(self, chunk: int, data_dir: str | None, device: str = "auto", record: bool = False):
        config = recipe("Model3", "seed", train_limit=128 * chunk, device=device)
        self.trainer = Trainer(config, load_mnist(data_dir))
        self.epoch = 0
        self.on_batch = None
        if record:
            store = RunStore(str(Path(tempfile.mkdtemp(prefix="mnist-lab-bench-")) / "runs.db"))
            run_id = store.create_run(config)
            self.on_batch = ProgressReporter(store, run_id, self.trainer, threading.Event(), None).batch_done

    def run(self) -> None:
        self.trainer.train_epoch(self.epoch, on_batch=self.on_batch)
        self.epoch += 1


class SeedLoopSide:
    """The seed's loop: torchvision DataLoader + transforms feeding the same model, optimizer and batch size."""

    def __init__(self, chunk: int, data_dir: str | None, device: str = "auto"):
        from torchvision import datasets, transforms

        torch.manual_seed(1)
        transform = transforms.Compose(
            [transforms.RandomRotation(7), transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))]
        )
        dataset = datasets.MNIST(str(data_root(data_dir)), train=True, download=False, transform=transform)
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=128, shuffle=True, num_workers=0, drop_last=True)
        self.batches = iter(self.loader)
        self.device = pick_device(device)
        self.model = seed_model().to(self.device).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.chunk = chunk

    def run(self) -> None:
        for _ in range(self.chunk):
            try:
                x, y = next(self.batches)
            except StopIteration:
                self.batches = iter(self.loader)
                x, y = next(self.batches)
            x, y = x.to(self.device), y.to(self.device)  # the seed's loop on a GPU: batches made on the CPU
            loss = F.nll_loss(F.log_softmax(self.model(x), dim=1), y)  # the seed's log_softmax + NLL
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()


def rotate_batch(x: torch.Tensor, degrees: float, generator: torch.Generator) -> torch.Tensor:
    """Random rotation (+-degrees) of a whole batch in one affine_grid/grid_sample, background filled."""
    angle = (torch.rand(x.shape[0], generator=generator) * 2 - 1).mul_(math.radians(degrees)).to(x.device)
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    background = (0.0 - MEAN) / STD
    return F.grid_sample(x - background, grid, align_corners=False) + background


class PlainTorchSide:
    """The strongest plain-PyTorch loop we could write without our layers: MNIST as normalised tensors in
    memory, one batched rotation per batch, the seed's model with torch's nn.Dropout and nn.BatchNorm2d,
    channels_last (measured faster than NCHW for it, see the README), and the process settings any loop can
    make (threads = the cores it may use, the allocator told to keep freed activations). Same model, batch,
    dropout and SGD."""

    def __init__(self, chunk: int, data_dir: str | None, device: str = "auto",
                 memory_format: torch.memory_format = torch.channels_last):
        keep_freed_memory_for_reuse()
        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        torch.manual_seed(1)
        self.device = pick_device(device)
        data = load_mnist(data_dir)
        self.x, self.y = data.train_x.to(self.device), data.train_y.to(self.device)
        self.model = seed_model().to(self.device, memory_format=memory_format).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.memory_format = memory_format
        self.generator = torch.Generator().manual_seed(1)
        self.order = torch.randperm(len(self.y), generator=self.generator).to(self.device)
        self.chunk, self.at = chunk, 0

    def run(self) -> None:
        for _ in range(self.chunk):
            if self.at + 128 > len(self.order):
                self.order, self.at = torch.randperm(len(self.y), generator=self.generator).to(self.device), 0
            idx = self.order[self.at : self.at + 128]
            self.at += 128
            x = rotate_batch(self.x[idx], 7.0, self.generator).contiguous(memory_format=self.memory_format)
            loss = F.cross_entropy(self.model(x), self.y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # a GPU round is timed to the end of its last kernel


def _side_process(kind: str, chunk: int, data_dir: str | None, device: str, conn) -> None:
    """Child process holding one side: warms up, then times one round per "run" message."""
    if kind == "seed":
        side = SeedLoopSide(chunk, data_dir, device)
    elif kind in ("plain", "plain-nchw"):
        side = PlainTorchSide(chunk, data_dir, device, torch.contiguous_format if kind == "plain-nchw" else torch.channels_last)
    else:
        side = EngineSide(chunk, data_dir, device, kind == "recording")
    side.run()  # warm-up: allocator, first-call costs
    _sync()
    conn.send("ready")
    while conn.recv() == "run":
        t0, cpu0 = time.perf_counter(), time.process_time()
        side.run()
        _sync()
        conn.send((time.perf_counter() - t0, time.process_time() - cpu0))
    conn.send(peak_memory_mb())


def images_per_second(batches: int, rounds: int, data_dir: str | None, device: str = "auto",
                      sides: tuple[str, ...] = ("seed", "ours")) -> tuple[dict, dict, dict]:
    """Images/s of each side ("seed": the seed's loop, "plain": plain PyTorch, "ours": our engine,
    "recording": our engine writing progress and step points to a store), each side's peak memory (MB),
    and its CPU time per batch (ms, the process's, all threads), over `batches` batches each, run in
    alternating rounds.

    Each side lives in its own fresh process, so the seed's loop runs with the process defaults it
    had (our engine's allocator and thread settings are not applied to it), and only one side runs
    at a time. Alternating rounds means both sides see the same background load when the machine is
    shared; one warm-up round per side is not timed. Each side's figure is its total over all rounds.
    With one thread per side, CPU time does not count the time other processes held the core, so it
    compares the sides on a loaded machine where wall time cannot.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    chunk = max(1, batches // rounds)
    pipes, procs = {}, []
    for kind in sides:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_side_process, args=(kind, chunk, data_dir, device, child), daemon=True)
        proc.start()
        pipes[kind] = parent
        procs.append(proc)
    seconds = {kind: 0.0 for kind in pipes}
    cpu = {kind: 0.0 for kind in pipes}
    peaks = {}
    try:
        for kind, conn in pipes.items():  # set up and warm up one after the other
            if conn.recv() != "ready":
                raise RuntimeError(f"bench side {kind!r} did not start")
        for _ in range(rounds):
            for kind, conn in pipes.items():
                conn.send("run")
                wall, used = conn.recv()
                seconds[kind] += wall
                cpu[kind] += used
        for kind, conn in pipes.items():
            conn.send("stop")
            peaks[kind] = conn.recv()
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    speed = {kind: 128 * chunk * rounds / seconds[kind] for kind in sides}
    return speed, peaks, {kind: 1000 * cpu[kind] / (chunk * rounds) for kind in sides}


def profile_engine(batches: int, data_dir: str | None, rows: int = 15) -> str:
    """torch.profiler's table (self CPU time per op) over `batches` training batches of our engine."""
    from torch.profiler import ProfilerActivity, profile

    side = EngineSide(batches, data_dir)
    side.run()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        side.run()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=45)


def step_parts(data_dir: str | None, steps: int = 20) -> dict[str, list[float]]:
    """CPU time (ms, median over `steps` batches, this thread) of augmentation, forward, backward and the SGD
    step, for our engine ("ours") and the plain loop ("plain"); meant for one thread (taskset -c 0)."""
    engine, plain = EngineSide(steps, data_dir, "cpu"), PlainTorchSide(steps, data_dir, "cpu")
    data, g = engine.trainer.data, torch.Generator().manual_seed(0)
    sides = {
        "ours": (engine.trainer.model, engine.trainer.optimizer, lambda x: augment_batch(x, 7.0, generator=g)),
        "plain": (plain.model, plain.optimizer, lambda x: rotate_batch(x, 7.0, g)),
    }
    parts = {}
    for name, (model, optimizer, augment) in sides.items():
        rows = []
        for _ in range(steps + 3):  # the first three are warm-up
            idx = torch.randint(0, len(data.train_y), (128,), generator=g)
            t = [time.thread_time()]
            x = augment(data.train_x[idx]).contiguous(memory_format=torch.channels_last)
            t.append(time.thread_time())
            loss = F.cross_entropy(model(x), data.train_y[idx])
            t.append(time.thread_time())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t.append(time.thread_time())
            optimizer.step()
            t.append(time.thread_time())
            rows.append([1000 * (b - a) for a, b in zip(t, t[1:], strict=False)])
        parts[name] = [sorted(col)[len(col) // 2] for col in zip(*rows[3:], strict=True)]
    return parts


def conv_costs(repeats: int = 12) -> list[tuple[str, float, float]]:
    """Per convolution of Model3 at batch 128, channels_last: (shapes, forward ms, forward + backward ms),
    the best CPU time (this thread) of `repeats` calls of the layer alone."""
    model = build_model("Model3").to(memory_format=torch.channels_last)
    shapes = {}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.__setitem__(m, (i[0].shape, o.shape))) for m in convs]
    model(torch.zeros(128, 1, 28, 28).contiguous(memory_format=torch.channels_last))
    for h in hooks:
        h.remove()

    def best(conv: nn.Conv2d, x: torch.Tensor, grad: torch.Tensor | None) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.thread_time()
            out = conv(x)
            if grad is not None:
                out.backward(grad)
            times.append(1000 * (time.thread_time() - t0))
        return min(times)

    rows = []
    for conv in convs:
        shape_in, shape_out = shapes[conv]
        x = torch.randn(shape_in).contiguous(memory_format=torch.channels_last).requires_grad_(shape_in[1] > 1)
        grad = torch.randn(shape_out).contiguous(memory_format=torch.channels_last)
        rows.append((f"{tuple(shape_in)} -> {tuple(shape_out)}", best(conv, x, None), best(conv, x, grad)))
    return rows


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
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds the batches are split into")
    p.add_argument("--data", default=None, help="MNIST root (default: $MNIST_ROOT, else ./data)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where both sides train (auto: CUDA when present)")
    p.add_argument("--skip-time-to-target", action="store_true", help="only the speed ratio and memory")
    p.add_argument("--profile", action="store_true", help="only profile our engine over --batches batches (where the time goes)")
    p.add_argument("--parts", action="store_true",
                   help="only the CPU time of each part of a step (ours and plain) and of each convolution; run it at one thread")
    args = p.parse_args(argv)
    if args.batches < 1 or args.rounds < 1:
        p.error("--batches and --rounds must be >= 1")
    if args.profile:
        print(f"Model3, batch 128, {args.batches} batches of our engine, {torch.get_num_threads()} threads", flush=True)
        print(profile_engine(args.batches, args.data))
        return 0

    if args.parts:
        print(f"CPU time per part of a step (ms, median of 20, {torch.get_num_threads()} threads): augment, forward, backward, SGD")
        for name, ms in step_parts(args.data).items():
            print(f"  {name:5}  " + "  ".join(f"{v:5.1f}" for v in ms) + f"   total {sum(ms):.1f}")
        print("Model3's convolutions alone, batch 128, channels_last (ms, best CPU time of 12): forward, forward + backward")
        rows = conv_costs()
        for shapes, forward, both in rows:
            print(f"  {shapes:42} {forward:6.2f} {both:6.2f}")
        print(f"  all convolutions: forward + backward {sum(r[2] for r in rows):.1f} ms")
        return 0

    where = torch.cuda.get_device_name() if args.device != "cpu" and torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"Model3, batch 128, {args.batches} timed batches each side, {where}", flush=True)
    speed, peaks, cpu_ms = images_per_second(args.batches, args.rounds, args.data, args.device, ("seed", "plain", "ours", "recording"))
    print(f"seed loop (DataLoader + transforms):     {speed['seed']:8.0f} images/s")
    print(f"plain PyTorch (tensors, torch's layers): {speed['plain']:8.0f} images/s")
    print(f"our engine (Trainer):                    {speed['ours']:8.0f} images/s")
    print(f"our engine, recording steps to a store:  {speed['recording']:8.0f} images/s "
          f"({100 * (speed['recording'] / speed['ours'] - 1):+.1f}% images/s against the engine without it)")
    print(f"ratio {speed['ours'] / speed['seed']:.2f}x (our engine / seed loop)")
    print(f"ratio {speed['ours'] / speed['plain']:.2f}x (our engine / plain PyTorch)")
    print(f"CPU time per batch (all threads): seed loop {cpu_ms['seed']:.1f} ms, plain PyTorch {cpu_ms['plain']:.1f} ms, "
          f"our engine {cpu_ms['ours']:.1f} ms; ratios {cpu_ms['seed'] / cpu_ms['ours']:.2f}x and "
          f"{cpu_ms['plain'] / cpu_ms['ours']:.2f}x (comparable on a loaded machine at 1 thread: taskset -c 0)", flush=True)

    if not args.skip_time_to_target:
        config = recipe("Model3", "reference", device=args.device)
        print(f"time to {TARGET}% test, Model3 reference recipe: {config.to_json()}", flush=True)
        seconds, epoch, best = time_to_target(config, args.data)
        if seconds is None:
            print(f"time to {TARGET}%: not reached in {config.epochs} epochs (best {best:.2f}%)")
        else:
            print(f"time to {TARGET}%: {seconds:.1f}s, at epoch {epoch} ({best:.2f}%)")
        # This process did nothing but load MNIST and train: its peak is the training process's.
        print(f"peak memory of the training process (ru_maxrss, full MNIST, 15-epoch run) {peak_memory_mb():.0f} MB")
    print(f"peak memory of the bench processes (ru_maxrss): seed loop {peaks['seed']:.0f} MB, "
          f"our engine {peaks['ours']:.0f} MB (on a {128 * max(1, args.batches // args.rounds):,}-image slice)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
