"""End to end, the explanations (issue 14) in Debian's Chromium against a real `streamlit run`, with the shipped
Model3 reference and the real MNIST test set:

- Draw: a digit drawn with the mouse gets its saliency pictures (why the answer, what spoke for the runner-up);
- Inspect: a click on a confusion-matrix cell chooses that cell (the pickers follow) and shows its digits;
  a click on a unit of a feature map moves the unit and its receptive-field outline on the input;
- Ideas: the progression page renders.
Screenshots land in test-artifacts/screenshots/explain-*.png.
"""

from __future__ import annotations

import os
import re

import pytest

from tests.conftest import draw_seven, launch_chromium, start_streamlit, stop_server
from tests.test_browser import CHROMIUM, ROOT, SHOTS, no_error_box, settle

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's Chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    root = os.environ.get("MNIST_ROOT")
    if not root or not (os.path.isdir(os.path.join(root, "MNIST", "raw"))):
        pytest.skip("real MNIST not found: set MNIST_ROOT (Inspect evaluates the reference on the test set)")
    folder = tmp_path_factory.mktemp("explain")
    try:
        proc, base = start_streamlit(ROOT, {**os.environ, "MNIST_LAB_DB": f"sqlite:///{folder / 'runs.db'}"}, folder)
    except RuntimeError as e:
        pytest.fail(str(e))
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            pg = browser.new_page(viewport={"width": 1400, "height": 1100})
            pg.set_default_timeout(90_000)
            pg.base = base
            yield pg
            browser.close()
    finally:
        stop_server(proc)


def chart(page, title: str):
    """The plot area (plotly's drag layer) of the last plotly chart showing `title`, scrolled into view."""
    area = page.locator('[data-testid="stPlotlyChart"]').filter(has_text=title).last.locator(".nsewdrag").first
    area.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    return area


def click_cell(page, area, row: int, col: int, rows: int, cols: int) -> None:
    """Click the centre of heatmap cell (row, col): the axes span exactly the cells (core of Inspect.clickable)."""
    box = area.bounding_box()
    page.mouse.click(box["x"] + (col + 0.5) * box["width"] / cols, box["y"] + (row + 0.5) * box["height"] / rows)


def test_draw_saliency_confusion_cell_and_unit_outline(page):
    base = page.base
    # Draw: a 7 with the mouse; the saliency of the answer and of the runner-up appear
    page.goto(f"{base}/Draw")
    settle(page, "Brush size")
    draw_seven(page)
    page.get_by_text("red ink spoke for it", exact=False).first.wait_for()
    settle(page, "the runner-up")
    digit = page.locator('[data-testid="stMetricValue"]').first.inner_text().strip()
    why = page.get_by_text(re.compile(r"^Why \d: red ink spoke for it")).first.inner_text()
    assert why.startswith(f"Why {digit}:"), (digit, why)
    pictures = page.locator('[data-testid="stImage"] img')
    assert pictures.count() >= 3  # what the model sees, and the two saliency pictures
    page.get_by_text("the runner-up", exact=False).first.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "explain-1-draw-saliency.png"))
    no_error_box(page, "explain-1-draw-full")

    # Inspect (through the sidebar, so the drawn digit stays in the session): the confusion cell true 4,
    # predicted 9 by a click on the matrix
    page.locator('[data-testid="stSidebarNavLink"]', has_text="Inspect").click()
    settle(page, "Confusion matrix")
    page.get_by_text("The digits behind a cell").first.wait_for()
    area = chart(page, "Confusion matrix")
    click_cell(page, area, 4, 9, 10, 10)
    page.get_by_text(re.compile(r"test digits are 4s read as 9")).first.wait_for(timeout=60_000)
    settle(page, "read as 9")
    page.wait_for_timeout(1500)
    settle(page, "read as 9")
    page.get_by_text("The digits behind a cell").first.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "explain-2-inspect-confusion-cell.png"))
    shown = page.get_by_text(re.compile(r"^#\d+: ")).count()
    assert shown >= 1, "the cell's digits did not appear"
    # another cell: true 7 read as 2
    click_cell(page, chart(page, "Confusion matrix"), 7, 2, 10, 10)
    page.get_by_text(re.compile(r"test digits are 7s read as 2")).first.wait_for(timeout=60_000)

    # Feature maps: a click on unit (2, 3) of the first layer's channel map moves the outline to that unit
    page.get_by_text("One unit and the input it sees").first.wait_for()
    settle(page, "One unit and the input it sees")
    title = page.get_by_text(re.compile(r"Receptive field of unit \(\d+, \d+\)")).first
    before = title.text_content()
    unit_map = page.locator('[data-testid="stPlotlyChart"]').filter(has_text="channel").last.locator(".nsewdrag").first
    unit_map.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    h, w = (int(v) for v in re.search(r"\((\d+)x(\d+)\)", page.locator('[data-testid="stPlotlyChart"]').filter(
        has_text="channel").last.text_content()).groups())
    click_cell(page, unit_map, 2, 3, h, w)
    page.get_by_text("Receptive field of unit (2, 3)", exact=False).first.wait_for(timeout=60_000)
    settle(page, "Receptive field of unit (2, 3)")
    assert "(2, 3)" not in before, before  # the click moved the unit
    sees = page.get_by_text(re.compile(r"sees rows \d+–\d+, columns \d+–\d+")).first.inner_text()
    top, bottom, left, right = (int(v) for v in re.search(r"rows (\d+)–(\d+), columns (\d+)–(\d+)", sees).groups())
    assert 0 <= top <= bottom <= 27 and 0 <= left <= right <= 27
    # a deeper layer sees more: its unit (2, 2) outlines a larger box, on the 7's bar
    page.locator('[data-testid="stSelectbox"]', has_text="Layer").last.click()
    page.get_by_role("option", name="convblock4").click()
    settle(page, "convblock4, channel")
    unit_map = page.locator('[data-testid="stPlotlyChart"]').filter(has_text="convblock4, channel").last
    h, w = (int(v) for v in re.search(r"\((\d+)x(\d+)\)", unit_map.text_content()).groups())
    click_cell(page, unit_map.locator(".nsewdrag").first, 2, 2, h, w)
    page.get_by_text("Receptive field of unit (2, 2)", exact=False).first.wait_for(timeout=60_000)
    settle(page, "Receptive field of unit (2, 2)")
    deeper = page.get_by_text(re.compile(r"sees rows \d+–\d+, columns \d+–\d+")).first.inner_text()
    t2, b2, l2, r2 = (int(v) for v in re.search(r"rows (\d+)–(\d+), columns (\d+)–(\d+)", deeper).groups())
    assert b2 - t2 > bottom - top and r2 - l2 > right - left, (sees, deeper)
    page.get_by_text("One unit and the input it sees").first.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "explain-3-inspect-unit-outline.png"))
    no_error_box(page, "explain-3-inspect-full")

    # Ideas: the progression renders without an error
    page.goto(f"{base}/Ideas")
    settle(page, "The shipped runs")
    page.get_by_text("What it did in our runs").first.wait_for()
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for()
    page.wait_for_timeout(1000)
    no_error_box(page, "explain-4-ideas")
