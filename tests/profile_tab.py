"""What one browser tab on a live run costs the browser: a measurement, not a test.

Serves the project (`streamlit run dashboard/Home.py`, loopback) over a fresh store, opens one Chromium tab on
/Train?run=1, trains a long small run (Model2, 3,000 images an epoch: an epoch every ~0.5 s on this machine),
and after a warm-up reads Chromium's own counters (CDP `Performance.getMetrics`) over a window: main-thread
task, script, layout and style time; and, from /proc, the CPU time of all of Chromium's processes (compositing
and rasterising too). docs/scaling.md ("Session 7") got its per-rerun costs by running it on
checkouts with the live timers turned off one by one (`--root`, e.g. CHART_S or REFRESH_S set to 1e6 in
dashboard/live.py of a `git worktree`): the differences are what the charts' and the status line's timers cost.

    MNIST_ROOT=/work/shared .venv/bin/python tests/profile_tab.py [--root CHECKOUT] [--seconds 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.load_tabs import ARGS, CHROMIUM, browser_cpu, start_server, start_trainer  # noqa: E402

METRICS = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", type=Path, default=ROOT, help="the project checkout to serve")
    p.add_argument("--seconds", type=float, default=20.0, help="the measured window")
    p.add_argument("--warm-up", type=float, default=10.0, help="seconds of training before the window")
    a = p.parse_args()
    from playwright.sync_api import sync_playwright

    from core.config import TrainConfig
    from core.runs import RunStore

    folder = Path(tempfile.mkdtemp(prefix="mnist-lab-profile-"))
    db_url = f"sqlite:///{folder / 'runs.db'}"
    store = RunStore(db_url)
    run_id = store.create_run(TrainConfig(model="Model2", epochs=200, train_limit=3000, test_limit=1000))
    server, base = start_server(a.root, db_url, folder)
    trainer = None
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.goto(f"{base}/Train?run={run_id}")
            page.get_by_text(f"Run {run_id}: Model2").wait_for(timeout=60_000)
            trainer = start_trainer(argparse.Namespace(trainer_cpus=1, root=a.root), run_id, db_url, folder)
            page.wait_for_timeout(a.warm_up * 1000)
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")

            def metrics() -> dict:
                return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}

            others = {server.pid, trainer.pid}  # the rest of this script's descendants: Chromium (and Playwright)
            before, epochs_before, cpu_before = metrics(), len(store.epochs(run_id)), browser_cpu(others)
            page.wait_for_timeout(a.seconds * 1000)
            after, epochs_after, cpu_after = metrics(), len(store.epochs(run_id)), browser_cpu(others)
            browser.close()
    finally:
        if trainer:
            trainer.kill()
        server.terminate()
    print(f"{a.root}: {epochs_after - epochs_before} epochs pushed in {a.seconds:.0f} s; main thread (s): "
          + ", ".join(f"{k} {after[k] - before[k]:.3f}" for k in METRICS)
          + f"; all browser processes (CPU s, /proc) {cpu_after - cpu_before:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
