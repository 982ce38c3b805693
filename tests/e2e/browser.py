"""What the browser tests share: Debian's Chromium as Playwright drives it here, a workbench
fixture that skips without it, and logging in through the hub's form."""

import os
from pathlib import Path

import pytest

from tests.harness import Workbench

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
#: Where the screenshots for the docs go (docs/ui.md shows them).
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


@pytest.fixture(scope="module")
def browser_workbench():
    """A `workbench up` for a module of browser tests (skipped without Chromium)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    pytest.importorskip("playwright.async_api")
    wb = Workbench().start()
    yield wb
    if wb.proc.poll() is None:
        wb.stop()


async def login(browser, wb: Workbench, name: str, password: str, width=1200, height=720):
    """A new page logged in as `name` through the hub's login form."""
    context = await browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(30_000)
    page = await context.new_page()
    await page.goto(f"{wb.url}/hub/login")
    await page.fill("input[name=username]", name)
    await page.fill("input[name=password]", password)
    async with page.expect_navigation():
        await page.click("[type=submit]")
    assert "/hub/login" not in page.url, await page.content()
    return page
