"""The chat in a real browser: type, answer the question by button, send an empty message,
select a result, say "this is it"; ranked images and the pseudo-image on screen throughout."""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium: apt-get install chromium")


def test_chat_in_chromium_answers_selects_and_finds(world_app, tmp_path):
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
        expect(page.get_by_text("Pick an answer below")).to_be_visible()
        page.locator("button.answer").first.click()  # answer the question by button
        expect(page.get_by_text("Round 2: searched for")).to_be_visible(timeout=30_000)
        gallery = page.locator("#results img")
        expect(gallery).to_have_count(top_k, timeout=30_000)
        expect(page.get_by_text("#1 ·").first).to_be_visible()
        expect(page.locator("#pseudo img")).to_be_visible()
        # A refused message says why and leaves the dialog and the results on screen (an
        # error badge on them would hide both until the next turn).
        box.fill("   ")
        box.press("Enter")
        expect(page.get_by_text("Empty message").first).to_be_visible(timeout=10_000)
        expect(page.locator("#results").get_by_text("Error", exact=True)).to_have_count(0)
        expect(page.get_by_text("Round 2: searched for")).to_be_visible()
        expect(gallery).to_have_count(top_k)
        gallery.nth(2).click()
        expect(page.get_by_text("Selected: #3")).to_be_visible(timeout=10_000)
        if os.environ.get("ITIR_SCREENSHOT"):  # docs/ui.png is made this way
            page.wait_for_timeout(3000)  # let the pseudo-image's own event finish drawing
            page.screenshot(path=os.environ["ITIR_SCREENSHOT"])
        page.get_by_role("button", name="This is it").click()
        expect(page.get_by_text("Found at round 2")).to_be_visible(timeout=30_000)
        page.screenshot(path=str(tmp_path / "found.png"))
        assert (tmp_path / "found.png").stat().st_size > 10_000
        browser.close()
