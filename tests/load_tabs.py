"""How many browser tabs can watch one live run on the Train page: a bounded load measurement, not a test.

Starts `streamlit run dashboard/Home.py` on a loopback port over a fresh run store, opens N tabs of Debian's
Chromium on /Train?run=1, then trains a small real run (Model2, 12,000 images an epoch by default: an epoch every
~3 s here beside 20 tabs, against ~13 s for the full 60,000 and 15-20 s for Model3's recipe) into that store.
`--train-limit 3000` (the default until session 11; epochs 1.0-1.6 s apart) is the stress case: there 20 tabs on
this 2-core machine must each draw an epoch a second, at the edge of what their ~1.3 cores can (docs/scaling.md).
Each tab notes, in the page itself, when its "N epoch(s) recorded" caption first shows each epoch and every change
of its progress line; this script polls the store for the time each epoch row appears. Reports, per tab, the lag of
each epoch (shown - written; and delivered - written, when the caption's message reached the page's websocket,
before the browser rendered it: noted in the page, not relayed out through the browser's debugging protocol, which
with 20 tabs cost the shared cores a share of their time), the longest wait between two progress updates, and the
CPU of the server (and its RSS) and of the browser, from /proc (the browser shares the machine).

    MNIST_ROOT=/work/shared .venv/bin/python tests/load_tabs.py --tabs 20 --json before.json
    ... --root /tmp/other-checkout   # serve another checkout of the project (e.g. the previous commit)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.conftest import start_streamlit  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Runs in every tab before the page loads: records (Date.now() ms) the first time each epoch count shows in
# the caption, and every change of the progress line. Checks are batched: at most one per 50 ms per tab.
WATCHER = r"""
// kept in sessionStorage too, so that a reload of the tab (counted in __loads) keeps what it saw
const saved = JSON.parse(sessionStorage.getItem("watch") || '{"epochs": {}, "progress": [], "loads": 0, "delivered": {}}');
window.__epochs = saved.epochs; window.__progress = saved.progress; window.__loads = saved.loads + 1;
window.__delivered = saved.delivered || {};  // epoch -> when the message carrying its caption reached the page
const NativeWebSocket = window.WebSocket, latin1 = new TextDecoder("latin1");
window.WebSocket = class extends NativeWebSocket {  // noted in the page: relaying every frame out through the
  constructor(...args) {                         // browser's debugging protocol cost the shared cores too much
    super(...args);
    this.addEventListener("message", (ev) => {
      if (!(ev.data instanceof ArrayBuffer)) return;
      const now = Date.now();
      for (const m of latin1.decode(ev.data).matchAll(/(\d+) epoch\(s\) recorded/g))
        if (!(m[1] in window.__delivered)) window.__delivered[m[1]] = now;
    });
  }
};
let pending = false, last = "", saved_at = -1, changes = 0;
function check() {
  pending = false;
  const now = Date.now();
  for (const el of document.querySelectorAll('[data-testid="stCaptionContainer"]')) {
    const m = el.textContent.match(/(\d+) epoch\(s\) recorded/);
    if (m && !(m[1] in window.__epochs)) { window.__epochs[m[1]] = now; changes++; }
  }
  const bar = document.querySelector('[data-testid="stProgress"]');
  const text = bar ? bar.textContent : "";
  if (text && text !== last) { last = text; window.__progress.push([now, text]); changes++; }
  const delivered = Object.keys(window.__delivered).length;
  if (changes + delivered === saved_at) return;  // written only when something changed: the writes cost the shared cores
  saved_at = changes + delivered;
  sessionStorage.setItem("watch", JSON.stringify({epochs: window.__epochs, progress: window.__progress, loads: window.__loads,
                                                  delivered: window.__delivered}));
}
new MutationObserver(() => { if (!pending) { pending = true; setTimeout(check, 50); } })
  .observe(document, {subtree: true, childList: true, characterData: true});
setInterval(check, 500);
"""


def proc_sample(pid: int) -> tuple[float, int]:
    """(CPU seconds used so far, resident set in bytes) of one process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
    with open(f"/proc/{pid}/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def browser_cpu(exclude: set[int]) -> float:
    """CPU seconds used so far by this script's other descendants (Playwright's driver and Chromium)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - mine
        mine |= frontier
    total = 0.0
    for pid in mine - exclude:
        try:
            total += proc_sample(pid)[0]
        except (OSError, IndexError):
            pass
    return total


def lag_summary(lags: list[float]) -> dict:
    """Median, 90th percentile and worst of a list of lags (seconds), rounded; None where there are none."""
    if not lags:
        return {"median": None, "p90": None, "max": None}
    return {"median": round(statistics.median(lags), 2), "p90": round(sorted(lags)[round(0.9 * (len(lags) - 1))], 2),
            "max": round(max(lags), 2)}


def emit(report: dict, path: Path | None) -> None:
    """Print the report as JSON, and write it to `path` when given."""
    text = json.dumps(report, indent=1)
    print(text)
    if path:
        path.write_text(text + "\n")


def watched_run_args(p: argparse.ArgumentParser) -> None:
    """The options of the watched run and the report, shared with tests/load_sessions.py."""
    p.add_argument("--epochs", type=int, default=8, help="epochs of the watched run")
    p.add_argument("--train-limit", type=int, default=12000, help="training images per epoch (3000: the stress case)")
    p.add_argument("--budget", type=float, default=100.0, help="seconds of training watched, at most")
    p.add_argument("--trainer-cpus", type=int, default=1, help="cores the training process may use (0: all)")
    p.add_argument("--root", type=Path, default=ROOT, help="the project checkout to serve")
    p.add_argument("--json", type=Path, default=None, help="write the figures here as JSON")


def start_trainer(a: argparse.Namespace, run_id: int, db_url: str, folder: Path) -> subprocess.Popen:
    """Train the queued run in its own process (output in folder/train.log), on a.trainer_cpus cores (its torch
    threads follow its affinity) so that it does not starve the server and the clients of a 2-core machine."""
    cmd = [sys.executable, "-m", "core.train", "--run-id", str(run_id), "--runs", db_url, "--quiet"]
    if os.environ.get("MNIST_ROOT"):
        cmd += ["--data", os.environ["MNIST_ROOT"]]
    cpus = set(sorted(os.sched_getaffinity(0))[: a.trainer_cpus]) if a.trainer_cpus else None
    return subprocess.Popen(cmd, cwd=a.root, stdout=open(folder / "train.log", "wb"), stderr=subprocess.STDOUT,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)


def start_server(root: Path, db_url: str, folder: Path) -> tuple[subprocess.Popen, str]:
    return start_streamlit(root, {**os.environ, "MNIST_LAB_DB": db_url}, folder)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tabs", type=int, default=20, help="browser tabs watching the run")
    p.add_argument("--open-timeout", type=float, default=60.0, help="seconds for the tabs to show the run, at most")
    p.add_argument("--one-browser", action="store_true", help="all tabs in one browser context (shared connections)")
    watched_run_args(p)
    a = p.parse_args()
    t_start = time.monotonic()
    load_before = os.getloadavg()[0]

    sys.path.insert(0, str(a.root.resolve()))  # the store as the served checkout writes it
    from playwright.sync_api import sync_playwright

    from core.config import TrainConfig
    from core.runs import RunStore

    folder = Path(tempfile.mkdtemp(prefix="mnist-lab-load-"))
    db_url = f"sqlite:///{folder / 'runs.db'}"
    store = RunStore(db_url)
    run_id = store.create_run(TrainConfig(model="Model2", epochs=a.epochs, train_limit=a.train_limit, test_limit=1000))
    server, base = start_server(a.root, db_url, folder)
    trainer = None
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            shared = browser.new_context(viewport={"width": 1400, "height": 1000})

            def new_tab():
                """A tab in its own browser context (a student's own browser: its own connections to the server)
                unless --one-browser (tabs of one browser share ~6 connections per host)."""
                context = shared if a.one_browser else browser.new_context(viewport={"width": 1400, "height": 1000})
                context.add_init_script(WATCHER)
                return context.new_page()
            pages = []
            for _ in range(a.tabs):  # all tabs connect at once, as a class opening the link would
                pg = new_tab()
                pg.set_default_timeout(60_000)
                pg.goto(f"{base}/Train?run={run_id}", wait_until="commit")
                pages.append(pg)
            open_by = time.monotonic() + a.open_timeout
            while time.monotonic() < open_by:
                loaded = sum(pg.evaluate("'0' in window.__epochs") for pg in pages)
                if loaded == a.tabs:
                    break
                pages[0].wait_for_timeout(500)
            open_s = time.monotonic() - t_start
            print(f"{loaded} of {a.tabs} tabs showed the run after {open_s:.1f} s; training starts", flush=True)
            deadline = time.monotonic() + a.budget

            written: dict[int, float] = {}  # epoch -> unix time its row was first seen in the store
            done = threading.Event()

            def poll_store() -> None:
                while not done.is_set():
                    now = time.time()
                    for r in store.epochs(run_id):
                        written.setdefault(r["epoch"], now)
                    time.sleep(0.1)

            samples: list[tuple[float, float, int, float]] = []  # (monotonic, server cpu s, rss bytes, browser cpu s)

            def poll_server() -> None:
                while not done.is_set():
                    others = {server.pid, trainer.pid if trainer else -1}
                    samples.append((time.monotonic(), *proc_sample(server.pid), browser_cpu(others)))
                    time.sleep(1.0)

            threads = [threading.Thread(target=f, daemon=True) for f in (poll_store, poll_server)]
            for t in threads:
                t.start()
            trainer = start_trainer(a, run_id, db_url, folder)
            t_train = time.monotonic()
            # keep the browser's event loop turning (the watcher runs in the pages themselves)
            while trainer.poll() is None and time.monotonic() < deadline:
                pages[0].wait_for_timeout(1000)
            train_s = time.monotonic() - t_train
            # a tab that lags gets up to 10 s more to show the last epoch written
            catch_up = time.monotonic() + 10
            last = max(written, default=0)
            while time.monotonic() < catch_up:
                if all(pg.evaluate(f"String({last}) in window.__epochs") for pg in pages):
                    break
                pages[0].wait_for_timeout(500)
            done.set()
            for t in threads:
                t.join()
            tabs = [pg.evaluate("[window.__epochs, window.__progress, window.__loads, window.__delivered]") for pg in pages]
            pages[0].screenshot(path=str(folder / "tab0.png"))
            browser.close()
    finally:
        if trainer and trainer.poll() is None:
            trainer.terminate()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()

    lags: list[float] = []
    delivery: list[float] = []  # written -> the caption's message reached the tab's websocket (before rendering)
    per_tab = []
    for epochs_seen, progress, loads, delivered in tabs:
        seen = {int(k): v / 1000 for k, v in epochs_seen.items()}
        arrived = {int(k): v / 1000 for k, v in delivered.items()}
        tab_lags = {e: round(seen[e] - w, 2) for e, w in written.items() if e in seen}
        delivery += [arrived[e] - w for e, w in written.items() if e in arrived]
        missed = sorted(e for e in written if e not in seen)
        # on screen: the first time the caption counted it (an epoch drawn together with the next one is counted)
        on_screen = {e: min((t for c, t in seen.items() if c >= e), default=None) for e in written}
        screen_lags = [on_screen[e] - w if on_screen[e] is not None else float("inf") for e, w in written.items()]
        times = [t / 1000 for t, _ in progress]
        gaps = [b - a_ for a_, b in zip(times, times[1:], strict=False)]
        lags += tab_lags.values()
        per_tab.append({"max_lag_s": max(tab_lags.values(), default=None), "missed_epochs": missed,
                        "max_on_screen_lag_s": round(max(screen_lags, default=0.0), 2), "loads": loads,
                        "progress_updates": len(progress), "longest_gap_s": round(max(gaps, default=0.0), 1)})
    cpu_window = [s for s in samples if s[0] >= t_train]
    span = cpu_window[-1][0] - cpu_window[0][0] if len(cpu_window) > 1 else None
    cpu = (cpu_window[-1][1] - cpu_window[0][1]) / span if span else None
    browser = (cpu_window[-1][3] - cpu_window[0][3]) / span if span else None
    epoch_s = [written[e] - written[e - 1] for e in sorted(written) if e - 1 in written]
    report = {
        "tabs": a.tabs,
        "one_browser": a.one_browser,
        "tabs_loaded": loaded,
        "open_s": round(open_s, 1),
        "epochs_written": len(written),
        "seconds_per_epoch": round(statistics.mean(epoch_s), 2) if epoch_s else None,
        "epoch_gaps_s": [round(g, 2) for g in epoch_s],  # between rows: two close together can be drawn as one
        "training_s": round(train_s, 1),
        "epoch_lag_s": lag_summary(lags),
        "delivery_lag_s": {
            "median": round(statistics.median(delivery), 2) if delivery else None,
            "max": round(max(delivery), 2) if delivery else None,
            "missed": len(written) * a.tabs - len(delivery),
        },
        "tab_epochs_missed": sum(len(t["missed_epochs"]) for t in per_tab),
        "tabs_within_2s": sum(1 for t in per_tab if not t["missed_epochs"] and (t["max_lag_s"] or 0) <= 2.0),
        # looser: every epoch on screen within 2 s, perhaps drawn together with the next (the caption skipped it)
        "tabs_on_screen_within_2s": sum(1 for t in per_tab if t["max_on_screen_lag_s"] <= 2.0),
        "server_cpu_cores": round(cpu, 2) if cpu is not None else None,  # while training, mean
        "browser_cpu_cores": round(browser, 2) if browser is not None else None,
        "server_rss_mb_peak": round(max(s[2] for s in samples) / 2**20) if samples else None,
        "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],  # at start, at end
        "per_tab": per_tab,
        "log": str(folder / "streamlit.log"),
    }
    emit(report, a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
