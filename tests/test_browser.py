"""End to end: a real `streamlit run` on a free port, driven by Playwright in Debian's Chromium.

Visits every page without an error box, trains a tiny run from the Train page and watches its chart
gain points, draws a digit with the mouse and waits for a prediction. Screenshots land in
test-artifacts/screenshots/ (the path is printed).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.conftest import LIVE_SVGS_JS, draw_seven, launch_chromium, start_streamlit, stop_server, wait_for_plotly

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "test-artifacts" / "screenshots"
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's Chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The dashboard on a free port with an empty temporary run store; yields its base URL."""
    folder = tmp_path_factory.mktemp("browser")
    try:
        proc, base = start_streamlit(ROOT, {**os.environ, "MNIST_LAB_DB": f"sqlite:///{folder / 'runs.db'}"}, folder)
    except RuntimeError as e:
        pytest.fail(str(e))
    yield base
    stop_server(proc)


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {SHOTS}")
    with sync_playwright() as p:
        browser = launch_chromium(p)
        pg = browser.new_page(viewport={"width": 1400, "height": 1100})
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def settle(page, text: str) -> None:
    """Wait until `text` is shown and the script has stopped running."""
    page.get_by_text(text, exact=False).first.wait_for()
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidgetRunningIcon\"]')", timeout=60_000)
    page.wait_for_timeout(500)


def no_error_box(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    boxes = page.locator(ERRORS)
    assert boxes.count() == 0, f"{name}: {boxes.first.inner_text()}"


def chart_points(page) -> int:
    """Markers in the Train page's accuracy chart (one per epoch: the test accuracy; the per-step train accuracy
    and the reference behind are lines): an SVG's circles while the run trains, Plotly's points once it has
    ended; 0 before the first epoch."""
    live = page.evaluate(f"() => ({LIVE_SVGS_JS}).filter(s => s.getAttribute('data-chart') === 'Accuracy')"
                         ".map(s => s.querySelectorAll('circle').length)")
    if live:
        return live[0]
    charts = page.locator('[data-testid="stPlotlyChart"]')
    if charts.count() == 0:
        return 0
    return charts.first.locator(".scatterlayer .point").count()


def test_every_page_train_live_and_draw_a_digit(server, page):
    t0 = time.monotonic()
    page.goto(server)
    settle(page, "Variants")
    no_error_box(page, "1-home")

    # Train: a tiny run, started from the page, watched live
    page.goto(f"{server}/Train")
    settle(page, "New run")
    page.get_by_text("our tuned recipe", exact=True).click()  # a usable model from a tiny run
    page.wait_for_timeout(1000)
    for label, value in (("Epochs", "3"), ("Training images", "2000"), ("Test images", "500")):
        box = page.get_by_label(label, exact=False)
        box.fill(value)
        box.press("Enter")
        page.wait_for_timeout(700)
    page.get_by_role("button", name="Start").click()
    page.get_by_text("Run 1: Model3").wait_for()
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        seen.append(chart_points(page))
        if page.get_by_text("3 epoch(s) recorded").count() and seen[-1] == 3:
            break
        page.wait_for_timeout(500)
    assert seen[-1] == 3, f"the accuracy chart never showed 3 epochs' test points; points seen: {sorted(set(seen))}"
    assert min(seen) < 6, "the chart was never seen growing"
    settle(page, "finished")
    # the page reruns once when the run ends (a status refresh after the end shows): Plotly's charts replace the
    # SVGs; on a loaded machine that can take longer than a fixed pause, so wait for their traces to be drawn
    wait_for_plotly(page)
    page.wait_for_timeout(500)
    lines = page.locator('[data-testid="stPlotlyChart"]').first.locator(".scatterlayer .trace").count()
    assert lines >= 3, lines  # the per-step line and the test points, the reference behind
    assert chart_points(page) == 3
    no_error_box(page, "2-train")

    page.goto(f"{server}/Compare")
    settle(page, "Summary")
    no_error_box(page, "3-compare")

    # Draw: a '1' and a '7'-ish stroke with the mouse; a prediction appears
    page.goto(f"{server}/Draw")
    settle(page, "Brush size")
    draw_seven(page)
    page.locator('[data-testid="stMetricValue"]').first.wait_for()
    settle(page, "Prediction")
    digit = page.locator('[data-testid="stMetricValue"]').first.inner_text().strip()
    assert digit in list("0123456789")
    print(f"the model read the drawn digit as {digit}")
    no_error_box(page, "4-draw")

    # Inspect, reached through the sidebar so the drawn digit's feature maps are offered
    page.locator('[data-testid="stSidebarNavLink"]', has_text="Inspect").click()
    settle(page, "Feature maps")
    page.get_by_text("convblock7: 12 channels").wait_for()
    no_error_box(page, "5-inspect")
    page.get_by_text("convblock7: 12 channels").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "5b-inspect-feature-maps.png"))

    # Clear empties the canvas: the prediction goes and the hint comes back
    page.locator('[data-testid="stSidebarNavLink"]', has_text="Draw").click()
    settle(page, "Brush size")
    page.get_by_role("button", name="Clear").click()
    settle(page, "to see what the models read")
    assert page.locator('[data-testid="stMetricValue"]').count() == 0
    no_error_box(page, "6-draw-cleared")

    # an uploaded photo-like picture (dark ink on light paper) is read too; a non-picture is refused
    picture = SHOTS.parent / "upload-digit.png"
    img = Image.new("L", (120, 160), 235)
    ImageDraw.Draw(img).line([(60, 20), (60, 140)], fill=20, width=14)
    img.save(picture)
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(picture))
    page.locator('[data-testid="stMetricValue"]').first.wait_for()
    settle(page, "Prediction")
    no_error_box(page, "7-draw-upload")
    bogus = SHOTS.parent / "not-a-picture.png"
    bogus.write_bytes(b"this is not a PNG")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(bogus))
    page.get_by_text("not a readable picture: upload a PNG, JPEG, WebP, BMP or GIF").wait_for()
    assert time.monotonic() - t0 < 180
