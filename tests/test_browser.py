"""The chat in a real browser: type, press Enter, see ranked images and the pseudo-image."""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium: apt-get install chromium")


def test_chat_in_chromium_shows_results(world_app):
    from playwright.sync_api import expect, sync_playwright

    url, top_k = world_app
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        box = page.get_by_placeholder("e.g. two red circles on a blue background")
        box.fill("a red circle on a blue background")
        box.press("Enter")
        expect(page.get_by_text("Round 1: searched for")).to_be_visible(timeout=30_000)
        box.fill("the circle is large")
        box.press("Enter")
        expect(page.get_by_text("Round 2: searched for")).to_be_visible(timeout=30_000)
        gallery = page.locator("#results img")
        expect(gallery).to_have_count(top_k, timeout=30_000)
        expect(page.get_by_text("#1 ·").first).to_be_visible()
        expect(page.locator("#pseudo img")).to_be_visible()
        if os.environ.get("ITIR_SCREENSHOT"):  # docs/ui.png is made this way
            page.screenshot(path=os.environ["ITIR_SCREENSHOT"])
        browser.close()
