"""End to end, own digits (issue 15): in Chromium, draw a digit and label it on Draw, import a zip of more (a
zip-slip zip is refused and changes nothing), see them in the My digits gallery, fine-tune the reference on them
(tiny: one epoch over 1,000 MNIST images) and see the before/after; the new model is a choice in Draw's picker.
Screenshots: test-artifacts/screenshots/digits-*.png."""

from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.conftest import draw_seven, launch_chromium, start_streamlit, stop_server
from tests.test_browser import CHROMIUM, ERRORS, ROOT, SHOTS, settle

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's Chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser-digits")
    if not os.environ.get("MNIST_ROOT"):
        pytest.skip("the fine-tune trains on the real MNIST: set MNIST_ROOT")
    try:
        proc, base = start_streamlit(ROOT, {**os.environ, "MNIST_LAB_DB": f"sqlite:///{folder / 'runs.db'}"}, folder)
    except RuntimeError as e:
        pytest.fail(str(e))
    yield base, folder
    stop_server(proc)


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        pg = browser.new_page(viewport={"width": 1400, "height": 1100})
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def digit_zip(path: Path, members: dict[str, tuple[int, int]] | None = None, extra: dict[str, bytes] | None = None) -> Path:
    """A zip of drawn digits: name -> (digit, shift)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, (d, shift) in (members or {}).items():
            img = Image.new("L", (280, 280), 0)
            ImageDraw.Draw(img).text((60 + shift, 40), str(d), fill=255, font_size=180)
            png = io.BytesIO()
            img.save(png, format="PNG")
            zf.writestr(name, png.getvalue())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    path.write_bytes(buf.getvalue())
    return path


def no_error_box(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    boxes = page.locator(ERRORS)
    assert boxes.count() == 0, f"{name}: {boxes.first.inner_text()}"


def test_draw_label_import_gallery_fine_tune_before_after(server, page):
    base, folder = server
    # Draw a 7 and label it
    page.goto(f"{base}/Draw")
    settle(page, "Brush size")
    draw_seven(page)
    settle(page, "This is a")
    page.locator('[data-testid="stButtonGroup"] button', has_text="7").click()
    settle(page, "Saved as a 7 to My digits")
    no_error_box(page, "digits-1-draw-labelled")

    # My digits: the drawing is there; a zip-slip zip is refused whole; a good zip comes in
    page.locator('[data-testid="stSidebarNavLink"]', has_text="My digits").click()
    settle(page, "Export and import")
    assert page.get_by_text("#1", exact=False).count() >= 1
    uploader = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
    evil = digit_zip(folder / "evil.zip", {"1/a.png": (1, 0)}, {"../../evil.png": b"x"})
    uploader.set_input_files(str(evil))
    page.get_by_role("button", name="Import", exact=True).click()
    settle(page, "zip-slip")
    page.screenshot(path=str(SHOTS / "digits-2-zip-slip-refused.png"), full_page=True)
    good = digit_zip(folder / "class.zip", {f"{d}/{n}.png": (d, 12 * n - 18) for d in (1, 7) for n in range(4)})
    uploader = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
    uploader.set_input_files(str(good))
    page.get_by_role("button", name="Import", exact=True).click()
    settle(page, "8 pictures imported from class.zip")
    assert page.get_by_text("#9", exact=False).count() >= 1 and page.get_by_text("#10", exact=False).count() == 0
    no_error_box(page, "digits-3-gallery")

    # Fine-tune the reference on them, tiny, and wait for the before/after
    for label, value in (("Epochs", "1"), ("MNIST training images", "1000")):
        field = page.get_by_label(label, exact=False)
        field.fill(value)
        field.press("Enter")
        page.wait_for_timeout(700)
    page.get_by_role("button", name="Fine-tune on my digits").click()
    page.get_by_text("watch it on Train").wait_for()
    t0 = time.monotonic()
    page.get_by_text("after: run 1's best").wait_for(timeout=300_000)
    print(f"fine-tune and before/after in {time.monotonic() - t0:.0f} s")
    settle(page, "after: run 1's best")
    no_error_box(page, "digits-4-page-after-fine-tune")
    page.locator('[data-testid="stTable"]').scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    page.screenshot(path=str(SHOTS / "digits-5-before-after.png"))
    assert page.get_by_text("held-out own digits (2)").count() >= 1  # every 4th of four 1s and five 7s

    # The fine-tuned model is one more choice in Draw's picker
    page.locator('[data-testid="stSidebarNavLink"]', has_text="Draw").click()
    settle(page, "Brush size")
    page.locator('[data-testid="stSelectbox"]').first.click()
    assert page.get_by_role("option", name="run 1: Model3", exact=False).count() == 1
