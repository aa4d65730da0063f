"""Reference runs shipped in the repo: core/reference/<Model>.pt (weights) and <Model>.json (config + history).

They let the dashboard show curves and predict before anyone trains. Regenerate them all with
    python -m core.reference            (one 15-epoch run per variant, through the normal training path)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn as nn

from core.config import TrainConfig, recipe
from core.models import MODELS, build_model, count_parameters
from core.runs import load_state_bytes

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


def reference_names() -> list[str]:
    """Variants that have a shipped reference run, in registry order."""
    return [n for n in MODELS if (REFERENCE_DIR / f"{n}.pt").is_file() and (REFERENCE_DIR / f"{n}.json").is_file()]


def reference_info(name: str) -> dict:
    """{"model", "config", "params", "epochs": [per-epoch dicts], "wall_seconds", "machine"}."""
    return json.loads((REFERENCE_DIR / f"{name}.json").read_text())


def load_reference_model(name: str) -> nn.Module:
    """The shipped weights of a variant, in eval mode, loaded with weights_only=True."""
    path = REFERENCE_DIR / f"{name}.pt"
    state = load_state_bytes(path.read_bytes(), str(path))
    config = TrainConfig.from_json(state["config"])
    model = build_model(config.model, config.dropout)
    model.load_state_dict(state["model"])
    return model.eval()


def save_reference(config: TrainConfig, model: nn.Module, epochs: list[dict], wall_seconds: float) -> None:
    REFERENCE_DIR.mkdir(exist_ok=True)
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save({"model": weights, "config": config.to_json()}, REFERENCE_DIR / f"{config.model}.pt")
    info = {
        "model": config.model,
        "config": json.loads(config.to_json()),
        "params": count_parameters(model),
        "epochs": epochs,
        "wall_seconds": round(wall_seconds, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    (REFERENCE_DIR / f"{config.model}.json").write_text(json.dumps(info, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    from core.runs import RunStore
    from core.worker import execute_run
    from core.cli import format_epoch

    p = argparse.ArgumentParser(prog="python -m core.reference", description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=list(MODELS), help="variants to (re)train (default: all)")
    p.add_argument("--data", default=None, help="MNIST root (default: $MNIST_ROOT, else ./data)")
    p.add_argument("--runs", default=None, help="run store the runs are recorded in (default: runs/runs.db)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    store = RunStore(args.runs)
    for name in args.models:
        config = recipe(name, "reference", seed=args.seed)
        run_id = store.create_run(config, label=f"reference {name}")
        print(f"{name}: run {run_id} {config.to_json()}", flush=True)
        t0 = time.perf_counter()
        status = execute_run(run_id, store.url, args.data, on_epoch=lambda r: print(format_epoch(r, config.epochs), flush=True))
        if status != "finished":
            print(f"{name}: run {run_id} ended {status}; reference not written")
            return 1
        state = store.load_checkpoint(run_id, "last")
        model = build_model(config.model, config.dropout)
        model.load_state_dict(state["model"])
        save_reference(config, model, store.epochs(run_id), time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
