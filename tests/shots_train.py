"""Screenshots of watching a real run learn, for the notes: not a test, a script anyone can rerun.

Starts the dashboard over a fresh run store and the real MNIST, starts a full-data Model3 run (the seed's
recipe, 15 epochs) from the Train page in Chromium, and saves test-artifacts/screenshots/train-03s.png,
-10s.png, -30s.png (seconds after the training process claimed the run; the reference run drawn grey
behind), train-health.png (layer health once an epoch is recorded) and compare-diff.png (the run and the
Model3 reference on Compare, with the settings that differ). With --finish it waits for the run to end and
prints what it wrote to the store: step, layer-health and activation rows, and bytes per table.

    MNIST_ROOT=/work/shared .venv/bin/python tests/shots_train.py [--finish]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from core.runs import RunStore  # noqa: E402
from tests.conftest import start_streamlit  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = ROOT / "test-artifacts" / "screenshots"
AT_SECONDS = (3, 10, 30)


def settle(page) -> None:
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidgetRunningIcon\"]')", timeout=120_000)
    page.wait_for_timeout(500)


def shot(page, name: str) -> Path:
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"saved {path}", flush=True)
    return path


def store_figures(store: RunStore, run_id: int) -> dict:
    """Rows the run wrote to each table, and the store's bytes per table (one run in this store)."""
    rows = {"epochs": len(store.epochs(run_id)), "steps": len(store.steps(run_id, 10**9)),
            "layer_health": len(store.layer_health(run_id, 10**9)),
            "activations": sum(len(store.activations(run_id, e["epoch"])) for e in store.epochs(run_id))}
    return {"rows": rows, "table_bytes": store.table_bytes()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--finish", action="store_true", help="wait for the run to end and print its store figures")
    a = p.parse_args()
    if not os.environ.get("MNIST_ROOT"):
        p.error("set MNIST_ROOT to a folder holding MNIST/raw/ (the real MNIST)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="mnist-lab-shots-"))
    url = f"sqlite:///{folder / 'runs.db'}"
    store = RunStore(url)
    server, base = start_streamlit(ROOT, {**os.environ, "MNIST_LAB_DB": url}, folder)
    print(f"store {url}; server log {folder / 'streamlit.log'}", flush=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1150})
            page.set_default_timeout(120_000)
            page.goto(f"{base}/Train?model=Model3&recipe=seed&label=full%20MNIST")
            page.get_by_text("New run").wait_for()
            settle(page)
            page.get_by_role("button", name="Start").click()
            page.get_by_text("Run 1: Model3").wait_for()
            run_id = store.list_runs(limit=1)[0].id
            while store.get(run_id).started_at is None:
                time.sleep(0.1)
            started = store.get(run_id).started_at
            for at in AT_SECONDS:
                time.sleep(max(0.0, started + at - time.time()))
                shot(page, f"train-{at:02d}s")
            while not store.epochs(run_id):
                page.wait_for_timeout(1000)
            page.get_by_text("Layer health").click()
            page.locator('[data-testid="stPlotlyChart"]').nth(5).wait_for()  # three training charts, three of health
            page.set_viewport_size({"width": 1500, "height": 2300})  # the page scrolls inside: a taller window shows it all
            page.wait_for_timeout(4000)  # a chart refresh (live.CHART_S) with the health charts drawn
            shot(page, "train-health")

            page.goto(f"{base}/Compare")
            page.get_by_text("Summary").wait_for()
            settle(page)
            keep = {f"Remove run {run_id}: Model3 full MNIST", "Remove Model3 (reference)"}  # the run and its reference
            picker = page.locator('[data-testid="stMultiSelect"]')
            while others := [b for b in picker.get_by_role("button").all()
                             if (b.get_attribute("aria-label") or "").startswith("Remove ")
                             and b.get_attribute("aria-label") not in keep]:
                others[0].click()
                settle(page)
            page.get_by_text("What differs between their settings").wait_for()
            settle(page)
            shot(page, "compare-diff")
            browser.close()
        if not a.finish:
            store.request_stop(run_id)  # the run was only for the pictures
        else:
            while store.get(run_id).active:
                time.sleep(5)
            run = store.get(run_id)
            print(json.dumps({"run": run_id, "status": run.status, "epochs": run.epoch,
                              "wall_s": round((run.ended_at or time.time()) - run.started_at, 1),
                              **store_figures(store, run_id)}, indent=1))
    finally:
        server.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
