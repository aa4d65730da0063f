"""Shared fixtures: synthetic IDX datasets written to disk, a temp run store, the real MNIST root."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.data import FILES, raw_dir  # noqa: E402


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (magic 0x0803 for 3-d images, 0x0801 for 1-d labels)."""
    magic = {3: 0x00000803, 1: 0x00000801}[array.ndim]
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_synthetic_mnist(root: Path, n_train: int = 512, n_test: int = 128, seed: int = 0) -> Path:
    """A learnable toy MNIST in torchvision's layout: class k is a bright bar at row 2k+4 plus noise."""
    rng = np.random.default_rng(seed)
    raw = raw_dir(root)
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
        for i, k in enumerate(labels):
            images[i, 2 * k + 4 : 2 * k + 7, 4:24] = 255
        write_idx(raw / FILES[split, "images"], images)
        write_idx(raw / FILES[split, "labels"], labels)
    return root


@pytest.fixture
def synthetic_root(tmp_path: Path) -> Path:
    return make_synthetic_mnist(tmp_path / "mnist")


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runs' / 'runs.db'}"


@pytest.fixture
def mnist_root() -> Path:
    """The real MNIST (slow tests): $MNIST_ROOT must hold MNIST/raw/ with the four files."""
    root = os.environ.get("MNIST_ROOT")
    if not root or not all((raw_dir(Path(root)) / f).is_file() for f in FILES.values()):
        pytest.skip("real MNIST not found: set MNIST_ROOT to a folder holding MNIST/raw/")
    return Path(root)


# ---- a real PostgreSQL server for the store's tests (Debian's `postgresql` package) ----------------------
def _postgres_bin() -> Path | None:
    """The newest server bin folder (/usr/lib/postgresql/<ver>/bin): Debian keeps initdb off PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_streamlit(root: Path, env: dict, folder: Path):
    """`streamlit run dashboard/Home.py` from `root` on a free port of 127.0.0.1 only, its output in
    folder/streamlit.log; returns (process, base URL) once it answers, else RuntimeError with the log's tail."""
    import subprocess
    import time
    import urllib.request

    port = _free_port()
    with open(folder / "streamlit.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "dashboard/Home.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none",
             "--browser.gatherUsageStats", "false"],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"streamlit did not start: {(folder / 'streamlit.log').read_text()[-2000:]}") from None
            time.sleep(0.5)


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL server for the session: initdb into a temp dir owned by `postgres` (initdb
    refuses root), pg_ctl on a free loopback port; stopped and removed afterwards. Yields a URL without database."""
    import shutil
    import subprocess
    import tempfile

    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin: apt-get install postgresql")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    tmp = Path(tempfile.mkdtemp(prefix="mnist-lab-pg-"))
    if as_postgres:
        shutil.chown(tmp, "postgres", "postgres")
    data, port = tmp / "data", _free_port()
    subprocess.run([*as_postgres, bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)
    opts = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run([*as_postgres, bin_dir / "pg_ctl", "-D", data, "-l", tmp / "server.log", "-o", opts, "-w", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_postgres, bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server: str) -> str:
    """A fresh, empty database on the session's PostgreSQL server, for one test."""
    import uuid

    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return f"{postgres_server}/{name}"


def dot(img: np.ndarray, y: int, x: int, r: int = 9) -> np.ndarray:
    """`img` with a round dot of radius r (an 18 px brush's click) at (y, x), in the ink's colour."""
    img = img.copy()
    yy, xx = np.ogrid[: img.shape[0], : img.shape[1]]
    img[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = 255
    return img


# ---- the browser tests' shared pieces (Debian's Chromium, driven by Playwright) ----------------------------
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]


def launch_chromium(playwright):
    """Debian's Chromium with the flags every browser test uses."""
    return playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)


def wait_for_plotly(page) -> None:
    """Wait (up to 60 s) until a Plotly chart has drawn its traces: once a run has ended its charts turn from
    pictures into Plotly charts, whose script loads first (a screenshot before shows empty placeholders)."""
    page.locator('[data-testid="stPlotlyChart"] .scatterlayer .trace').first.wait_for(timeout=60_000)


def stop_server(proc) -> None:
    """End a server started by start_streamlit: terminate, and kill it if it has not gone within 10 s."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def draw_seven(page) -> None:
    """Draw a 7 with the mouse on the Draw page's canvas (its bar, then its leg)."""
    canvas = page.locator("canvas").last
    canvas.wait_for()
    page.wait_for_timeout(1000)
    box = canvas.bounding_box()
    x0, y0 = box["x"], box["y"]
    page.mouse.move(x0 + 90, y0 + 60)
    page.mouse.down()
    for i in range(1, 21):
        page.mouse.move(x0 + 90 + 5 * i, y0 + 60)
    for i in range(1, 31):
        page.mouse.move(x0 + 190 - 2 * i, y0 + 60 + 6 * i)
    page.mouse.up()


SVG_URL = "data:image/svg+xml;base64,"


def live_svgs(at) -> list[str]:
    """The SVG charts an AppTest page shows as pictures (a live run's charts), decoded."""
    import base64

    urls = [img.url for image in at.get("image") for img in image.proto.imgs]
    return [base64.b64decode(u[len(SVG_URL):]).decode() for u in urls if u.startswith(SVG_URL)]


# JavaScript: the page's SVG chart pictures as parsed documents (a live run's charts)
LIVE_SVGS_JS = f"""[...document.querySelectorAll('[data-testid="stImage"] img')]
    .filter(i => i.src.startsWith('{SVG_URL}'))
    .map(i => new DOMParser().parseFromString(atob(i.src.split(',')[1]), 'image/svg+xml').documentElement)"""
