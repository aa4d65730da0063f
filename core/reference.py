"""Reference runs shipped in the repo: core/shipped/<Model>.pt (weights) and <Model>.json (config + history).

They let the dashboard show curves and predict before anyone trains. Regenerate them all with
    python -m core.reference            (one 15-epoch run per variant, through the normal training path)
    python -m core.reference Model3 --recipe seed   (the seed's own recipe, into core/shipped/seed-recipe/)
    python -m core.reference --table    (the README results table, from the shipped .json files)
Extra seeds go elsewhere so they never overwrite the shipped runs:
    python -m core.reference Model3 --seed 2 --out /tmp/seed2 --runs /tmp/seeds.db
    python -m core.reference --table --seed-dirs core/shipped /tmp/seed2 /tmp/seed3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

from core.cli import format_epoch
from core.config import ConfigError, TrainConfig, parse_overrides, recipe
from core.layers import FastDropout
from core.models import MODELS, build_model, count_parameters
from core.runs import RunStore, StoreError, load_state_bytes
from core.worker import execute_run

REFERENCE_DIR = Path(__file__).resolve().parent / "shipped"  # the shipped weights and histories
SEED_RECIPE_DIR = "seed-recipe"  # subfolder of a results folder holding runs of the seed's own recipe


def reference_names() -> list[str]:
    """Variants that have a shipped reference run, in registry order."""
    return [n for n in MODELS if (REFERENCE_DIR / f"{n}.pt").is_file() and (REFERENCE_DIR / f"{n}.json").is_file()]


def seed_recipe_names(with_weights: bool = False) -> list[str]:
    """Variants with a shipped run of the seed's own recipe (core/shipped/seed-recipe/), in registry
    order; with_weights: only those whose weights (.pt) ship too."""
    folder = REFERENCE_DIR / SEED_RECIPE_DIR
    return [n for n in MODELS if (folder / f"{n}.json").is_file() and (not with_weights or (folder / f"{n}.pt").is_file())]


def seed_recipe_info(name: str) -> dict:
    """Like reference_info, for the shipped run of the seed's own recipe."""
    return reference_info(name, REFERENCE_DIR / SEED_RECIPE_DIR)


def reference_for(config: TrainConfig) -> tuple[str, dict] | None:
    """The shipped run to set beside a run of `config`: the same variant under the same recipe when one
    ships (the seed's, or our tuned one), else the variant's reference; None when none ships.
    Returns (what it is, its reference_info)."""
    name = config.model
    seed = recipe(name, "seed")
    if name in seed_recipe_names() and (config.scheduler, config.lr, config.batch_size) == (seed.scheduler, seed.lr, seed.batch_size):
        return f"{name}, seed's recipe (reference)", seed_recipe_info(name)
    if name in reference_names():
        return f"{name} (reference)", reference_info(name)
    return None


def reference_info(name: str, folder: Path = REFERENCE_DIR) -> dict:
    """{"model", "config", "params", "epochs": [per-epoch dicts], "wall_seconds", "machine"}."""
    return json.loads((Path(folder) / f"{name}.json").read_text())


def best_test_by_model(store: RunStore) -> dict[str, float]:
    """Variant -> best test accuracy (%) over its shipped reference and every run in the store."""
    best = {name: max(e["test_acc"] for e in reference_info(name)["epochs"]) for name in reference_names()}
    for model, acc in store.best_by_model().items():
        best[model] = max(best.get(model, 0.0), acc)
    return best


def model_from_state(state: dict, where: str = "the checkpoint") -> nn.Module:
    """The model a checkpoint ({"model": weights, "config": its TrainConfig as JSON}) holds, in eval mode;
    one StoreError line when it holds no lab model (another config, weights of other shapes)."""
    try:
        config = TrainConfig.from_json(state["config"])
        model = build_model(config.model, config.dropout)
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # ConfigError and JSON errors are ValueErrors
        raise StoreError(f"{where} holds no model of this lab ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    return model.eval()


def load_reference_model(name: str, seed_recipe: bool = False) -> nn.Module:
    """The shipped weights of a variant (of its seed's-recipe run with seed_recipe=True), in eval mode,
    loaded with weights_only=True."""
    path = (REFERENCE_DIR / SEED_RECIPE_DIR if seed_recipe else REFERENCE_DIR) / f"{name}.pt"
    return model_from_state(load_state_bytes(path.read_bytes(), str(path), ("model", "config")), str(path))


def save_reference(
    config: TrainConfig, model: nn.Module, epochs: list[dict], wall_seconds: float, folder: Path = REFERENCE_DIR
) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save({"model": weights, "config": config.to_json()}, folder / f"{config.model}.pt")
    info = {
        "model": config.model,
        "config": json.loads(config.to_json()),
        "params": count_parameters(model),
        "epochs": epochs,
        "wall_seconds": round(wall_seconds, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    (folder / f"{config.model}.json").write_text(json.dumps(info, indent=1) + "\n")


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def _result_row(label: str, info: dict) -> str:
    name = info["model"]
    eps = info["epochs"]
    best = max(eps, key=lambda e: e["test_acc"])
    seed = MODELS[name].seed
    seed_cells = [f"{seed.params:,}", _pct(seed.best_train), _pct(seed.best_test)] if seed else ["ours", "–", "–"]
    c = info["config"]
    how = f"{c['optimizer'].upper()}{' Nesterov' if c['nesterov'] else ''}, {c['scheduler']}, lr {c['lr']:g}"
    rates = {m.p for m in build_model(name, c["dropout"]).modules() if isinstance(m, FastDropout)}
    how += f", batch {c['batch_size']}, dropout {rates.pop() if rates else 0:g}"
    if c["translate"]:
        how += f", shift ±{c['translate']:g}"
    if c["weight_decay"]:
        how += f", wd {c['weight_decay']:g}"
    if c["scheduler"] == "onecycle" and c["onecycle_pct"] != TrainConfig.onecycle_pct:
        how += f", warm-up {c['onecycle_pct']:.0%}"
    if c.get("ema"):  # configs written before weight averaging existed lack the key
        how += f", weight average (ema {c['ema']:g})"
    if c.get("distill_from"):  # configs written before distillation existed lack the key
        how += f", taught by {c['distill_from']} (weight {c['distill_weight']:g}, T {c['distill_temp']:g})"
    return (
        f"| {label} | " + " | ".join(seed_cells) + f" | {info['params']:,} | {how} "
        f"| {max(e['train_acc'] for e in eps):.2f} | {best['test_acc']:.2f} "
        f"| {' / '.join(format(e['test_acc'], '.2f') for e in eps[-3:])} | {best['epoch']} | {info['wall_seconds']:.0f} s |"
    )


def results_table(folder: Path = REFERENCE_DIR) -> str:
    """Markdown: per variant, the seed's reported figures next to our reference run's."""
    head = (
        "| variant | seed: params | seed: best train | seed: best test | params | recipe | best train | best test "
        "| test, last 3 epochs | epoch of best | wall time |\n"
        "|---|---:|---:|---:|---:|---|---:|---:|---|---:|---:|"
    )
    rows = [head]
    # The reference runs, then runs of the seed's own recipe where one was kept (--recipe seed)
    for sub, suffix in (("", ""), (SEED_RECIPE_DIR, ", seed's recipe")):
        for name in MODELS:
            if (Path(folder) / sub / f"{name}.json").is_file():
                rows.append(_result_row(name + suffix, reference_info(name, Path(folder) / sub)))
    return "\n".join(rows)


def seed_stats_table(folders: list[Path]) -> str:
    """Markdown: per variant present in every folder, mean ± std of last-epoch test acc and the worst of the last 3."""
    rows = ["| variant | seeds | last-epoch test acc, mean ± std | worst of last 3 epochs (all seeds) | per seed (last 3) |",
            "|---|---|---:|---:|---|"]
    for name in MODELS:
        infos = [reference_info(name, f) for f in folders if (Path(f) / f"{name}.json").is_file()]
        if len(infos) < 2:
            continue
        last = [i["epochs"][-1]["test_acc"] for i in infos]
        worst = min(e["test_acc"] for i in infos for e in i["epochs"][-3:])
        per_seed = "; ".join(
            f"seed {i['config']['seed']}: " + "/".join(f"{e['test_acc']:.2f}" for e in i["epochs"][-3:]) for i in infos
        )
        seeds = ", ".join(str(i["config"]["seed"]) for i in infos)
        rows.append(f"| {name} | {seeds} | {statistics.mean(last):.3f} ± {statistics.stdev(last):.3f} | {worst:.2f} | {per_seed} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.reference", description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=list(MODELS), help="variants to (re)train (default: all)")
    p.add_argument("--data", default=None, help="MNIST root (default: $MNIST_ROOT, else ./data)")
    p.add_argument("--runs", default=None, help="run store the runs are recorded in (default: runs/runs.db)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--recipe", choices=("reference", "seed"), default="reference", help="which recipe to train")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="*", default=[],
                   help="override recipe settings (JSON values), for trying a candidate recipe with --out elsewhere")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the .pt/.json (default: core/shipped, or core/shipped/seed-recipe with --recipe seed)")
    p.add_argument("--table", action="store_true", help="print the README results table from --out and exit")
    p.add_argument("--seed-dirs", type=Path, nargs="*", default=None, help="with --table: folders of seed repeats")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = REFERENCE_DIR / SEED_RECIPE_DIR if args.recipe == "seed" and not args.table else REFERENCE_DIR
    if args.table:
        print(results_table(args.out))
        if args.seed_dirs:
            print()
            print(seed_stats_table(args.seed_dirs))
        return 0
    try:
        overrides = parse_overrides(args.overrides)
    except ConfigError as e:
        p.error(f"--set: {e}")
    store = RunStore(args.runs)
    for name in args.models:
        config = recipe(name, args.recipe, **{"seed": args.seed, **overrides})
        run_id = store.create_run(config, label=f"reference {name}", params=config.parameter_count())
        print(f"{name}: run {run_id} {config.to_json()}", flush=True)
        t0 = time.perf_counter()
        status = execute_run(run_id, store.url, args.data, on_epoch=lambda r, n=config.epochs: print(format_epoch(r, n), flush=True))
        if status != "finished":
            print(f"{name}: run {run_id} ended {status}; reference not written")
            return 1
        model = model_from_state(store.load_checkpoint(run_id, "last"))
        save_reference(config, model, store.epochs(run_id), time.perf_counter() - t0, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
