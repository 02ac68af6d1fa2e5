"""The web page in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; never a downloaded browser)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from .conftest import running_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = Path(os.environ.get("RESNETLAB_SCREENSHOT", "/tmp/resnetlab-serve-page.png"))

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium (apt-get install chromium)"
    ),
]


@pytest.fixture(scope="module")
def page_url(tiny_ckpt: Path):
    from resnetlab.predict import load
    from resnetlab.serve.app import create_app

    with running_server(create_app(load(tiny_ckpt, amp="off"), max_pixels=2_000_000)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_upload_shows_top5(browser, page_url, shared: Path) -> None:
    image = shared / "images" / "chelsea.png"
    expected = httpx.post(f"{page_url}/predict", files={"file": (image.name, image.read_bytes())}, timeout=60).json()

    page = browser.new_page(viewport={"width": 1000, "height": 700})
    outside = []  # the page must not fetch anything from anywhere but this server
    page.on(
        "request",
        lambda r: None if r.url.startswith(page_url) or r.url.startswith(("data:", "blob:")) else outside.append(r.url),
    )
    page.goto(page_url + "/")
    page.wait_for_function("document.getElementById('model-meta').textContent.includes('classes')")
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#result:not([hidden])", timeout=30_000)

    assert page.inner_text("#top-label") == expected[0]["label"]
    labels = page.locator("#bars .label").all_inner_texts()
    assert labels == [p["label"] for p in expected]
    assert page.locator("#preview").is_visible()
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert outside == []


def test_page_shows_api_errors(browser, page_url, tmp_path: Path) -> None:
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is text, not a PNG")
    page = browser.new_page()
    page.goto(page_url + "/")
    page.set_input_files("#file", str(not_image))
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "not an image" in page.inner_text("#error")
    assert page.locator("#result").is_hidden()
