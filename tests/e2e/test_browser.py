"""End to end in headless Chromium: log in, spawn a project session, use the Workbench panel."""

import os
import re
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.e2e.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DOCS_IMAGES,
    login,
)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

USER, PASSWORD = "dana", "dana-pass-123"
#: Where the screenshot of the Workbench panel is saved (for a human to look at).
SCREENSHOT = Path(
    os.environ.get("WORKBENCH_SCREENSHOT")
    or Path(tempfile.gettempdir()) / "workbench-browser-panel.png"
)


@pytest.fixture(scope="module")
def dana(browser_workbench):
    """User dana with a password and two projects: alpha (from a template) and beta."""
    wb = browser_workbench
    wb.add_login(USER, PASSWORD)
    token = wb.user_token(USER)
    for body in ({"name": "alpha", "template": "python-starter"}, {"name": "beta"}):
        r = httpx.post(
            f"{wb.api_url}/projects",
            json=body,
            headers={"Authorization": f"token {token}"},
            timeout=120,
        )
        assert r.status_code == 201, r.text
    return wb


async def test_login_spawn_and_workbench_panel(dana):
    from playwright.async_api import async_playwright, expect

    wb = dana
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            # Log in through the hub's login form.
            page = await login(browser, wb, USER, PASSWORD, width=1400, height=900)

            # The workbench spawn form offers the project and the profiles.
            await page.goto(f"{wb.url}/hub/spawn/{USER}/alpha")
            project = page.locator("select#workbench-project")
            await expect(project).to_be_visible()
            await expect(project).to_have_value("alpha")
            profiles = page.locator("select#workbench-profile option")
            assert await profiles.count() >= 1
            async with page.expect_navigation():
                await page.locator("form [type=submit]").first.click()

            # JupyterLab loads at the project's session URL (the first start takes a while).
            await page.wait_for_url(
                re.compile(rf"/user/{USER}/alpha/lab"), timeout=90_000, wait_until="commit"
            )
            await expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=60_000)

            # The session's root is the project directory: the template's README.md is there.
            readme = page.locator(".jp-DirListing-itemText", has_text=re.compile(r"^README\.md$"))
            await expect(readme).to_be_visible(timeout=30_000)

            # Open the Workbench side panel (unless it is already shown).
            panel = page.locator("#workbench-panel")
            if not await panel.is_visible():
                await page.locator(
                    ".jp-SideBar.jp-mod-left .lm-TabBar-tab[title='Workbench projects'],"
                    " .jp-SideBar.jp-mod-left .lm-TabBar-tab:has-text('Workbench')"
                ).first.click()
            await expect(panel).to_be_visible()

            items = panel.locator("li.jp-workbench-project")
            await expect(items).to_have_count(2)
            await expect(panel.locator(".jp-workbench-error")).to_be_hidden()
            await expect(panel.locator(".jp-workbench-context")).to_have_text("Session: alpha")

            alpha = panel.locator("li.jp-workbench-project[data-project=alpha]")
            await expect(alpha).to_have_attribute("data-current", "true")
            await expect(alpha).to_have_attribute("data-running", "true")
            await expect(alpha).to_have_attribute("data-role", "admin")
            await expect(alpha).to_have_class(re.compile(r"\bjp-mod-current\b"))
            link = alpha.locator("a.jp-workbench-session-link")
            await expect(link).to_have_text("Open")
            href = await link.get_attribute("href")
            assert href.rstrip("/").endswith(f"/user/{USER}/alpha/lab"), href

            beta = panel.locator("li.jp-workbench-project[data-project=beta]")
            await expect(beta).to_have_attribute("data-current", "false")
            await expect(beta).to_have_attribute("data-running", "false")
            await expect(beta).not_to_have_class(re.compile(r"\bjp-mod-current\b"))
            link = beta.locator("a.jp-workbench-session-link")
            await expect(link).to_have_text("Start")
            href = await link.get_attribute("href")
            assert href.rstrip("/").endswith(f"/hub/spawn/{USER}/beta"), href

            # The links resolve against the page: both lead to this hub.
            for anchor in await panel.locator("a.jp-workbench-session-link").all():
                absolute = await anchor.evaluate("a => a.href")
                assert absolute.startswith(wb.url + "/"), absolute

            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(SCREENSHOT))
            DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
            news = page.locator(".jp-Notification-Toast-Close, .Toastify__close-button")
            for close in await news.all():
                await close.click()
            await panel.screenshot(path=str(DOCS_IMAGES / "workbench-projects-panel.png"))

            await _create_and_delete_from_panel(page, panel, wb)
        finally:
            await browser.close()


async def _create_and_delete_from_panel(page, panel, wb):
    """The "New project" form: a server error beside the name, a create, a typed-name delete."""
    from playwright.async_api import expect

    token = wb.user_token(USER)
    headers = {"Authorization": f"token {token}"}

    await panel.locator("button.jp-workbench-new").click()
    form = panel.locator("form.jp-workbench-new-project")
    await expect(form).to_be_visible()
    # The template select offers the control plane's templates.
    await expect(form.locator("select[name=template] option[value=python-starter]")).to_have_count(
        1
    )

    # An invalid name: the server's message appears next to the name field.
    await form.locator("input[name=name]").fill("Bad Name")
    await form.locator("select[name=template]").select_option("python-starter")
    await form.locator("button.jp-workbench-create").click()
    name_error = form.locator(".jp-workbench-field-error[data-field=name]")
    await expect(name_error).to_be_visible()
    assert (await name_error.inner_text()).strip()
    await expect(form.locator("input[name=name]")).to_have_attribute("aria-invalid", "true")
    await panel.screenshot(path=str(DOCS_IMAGES / "workbench-new-project-error.png"))

    # A valid name: the project is created from the template and listed.
    await form.locator("input[name=name]").fill("gamma")
    await form.locator("input[name=description]").fill("Made in the panel")
    await form.locator("button.jp-workbench-create").click()
    gamma = panel.locator("li.jp-workbench-project[data-project=gamma]")
    await expect(gamma).to_be_visible(timeout=120_000)
    await expect(gamma).to_have_attribute("data-role", "admin")
    await expect(form).to_be_hidden()
    r = httpx.get(f"{wb.api_url}/projects/gamma", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["description"] == "Made in the panel"

    # Deleting needs the name typed again.
    await gamma.locator("button.jp-workbench-delete").click()
    confirm = gamma.locator("button.jp-workbench-confirm")
    await expect(confirm).to_be_disabled()
    await gamma.locator("input.jp-workbench-confirm-input").fill("gamm")
    await expect(confirm).to_be_disabled()
    await gamma.locator("input.jp-workbench-confirm-input").fill("gamma")
    await expect(confirm).to_be_enabled()
    await panel.screenshot(path=str(DOCS_IMAGES / "workbench-delete-confirm.png"))
    await confirm.click()
    await expect(gamma).to_have_count(0, timeout=60_000)
    r = httpx.get(f"{wb.api_url}/projects/gamma", headers=headers, timeout=30)
    assert r.status_code == 404, r.text
    await expect(panel.locator("li.jp-workbench-project")).to_have_count(2)
