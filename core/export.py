"""Take a trained model home: an ONNX file (runs anywhere onnxruntime does) or a PyTorch checkpoint.

    python -m core.export Model3 --out model3.onnx            # a shipped reference
    python -m core.export run:12 --out run12.onnx [--runs URL]  # run 12's best checkpoint
    python -m core.export run:12 --out run12.pt               # state_dict + its config, for torch.load

The ONNX model takes float32 (N, 1, 28, 28) normalised as MNIST ((pixel/255 - 0.1307) / 0.3081, white ink
on black) and returns (N, 10) logits, for any N.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from core.config import TrainConfig
from core.models import MODELS
from core.reference import load_reference_model, model_from_state, reference_info, reference_names
from core.runs import RunStore, StoreError


class ExportError(ValueError):
    """What to export is unknown or cannot be exported; the message says which."""


def load_named(name: str, store_url: str | None = None) -> tuple[nn.Module, TrainConfig]:
    """A shipped reference by variant name, or 'run:N' (run N's best checkpoint) from the store."""
    if name.startswith("run:"):
        number = name[4:]
        if not number.isdigit():
            raise ExportError(f"{name!r}: write run:N with N a run id, e.g. run:12")
        store = RunStore(store_url)
        store.get(int(number))  # "no run N in <store>" before looking for its files
        state = store.load_checkpoint(int(number), "best", ("model", "config"))
        return model_from_state(state, f"run {number}'s best checkpoint"), TrainConfig.from_json(state["config"])
    if name not in MODELS:
        raise ExportError(f"unknown model {name!r}: a variant ({', '.join(MODELS)}) or run:N")
    if name not in reference_names():
        raise ExportError(f"{name} has no shipped reference weights; export one of your runs with run:N")
    return load_reference_model(name), TrainConfig.from_dict(reference_info(name)["config"])


def onnx_bytes(model: nn.Module) -> bytes:
    """The model as ONNX (opset 18), batch dimension dynamic, input 'image', output 'logits'."""
    model = model.eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, 1, 28, 28)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=["logits"],
                          dynamic_shapes=({0: batch},), dynamo=True, optimize=True, verbose=False,
                          external_data=False)
        return path.read_bytes()


def checkpoint_bytes(model: nn.Module, config: TrainConfig) -> bytes:
    """{"model": state_dict, "config": TrainConfig JSON}: loads with torch.load(..., weights_only=True) and
    core.reference.model_from_state."""
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "config": config.to_json()}, buf)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.export", description=__doc__.splitlines()[0])
    p.add_argument("model", help="a variant with shipped weights (e.g. Model3) or run:N")
    p.add_argument("--out", required=True, help="FILE.onnx, or FILE.pt for a PyTorch checkpoint")
    p.add_argument("--runs", default=None, help="run store for run:N (default: $MNIST_LAB_DB, else runs/runs.db)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.suffix not in (".onnx", ".pt"):
        print(f"error: --out must end in .onnx or .pt, got {out.name}", file=sys.stderr)
        return 2
    try:
        model, config = load_named(args.model, args.runs)
        data = onnx_bytes(model) if out.suffix == ".onnx" else checkpoint_bytes(model, config)
        out.write_bytes(data)
    except (ExportError, StoreError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({len(data):,} bytes): {config.model}, input (N, 1, 28, 28) float32 normalised as MNIST, output (N, 10) logits")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
