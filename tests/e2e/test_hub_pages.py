"""The hub's own pages in headless Chromium: from no project to a running session and back,
and no path through them ends in the default server's refusal."""

import re

import httpx
import pytest

from tests.e2e.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DOCS_IMAGES,
    login,
)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

USER, PASSWORD = "erin", "erin-pass-123"


def _refused(text: str) -> bool:
    return "SpawnException" in text or "Error: 400" in text


def test_sharing_with_a_user_who_never_logged_in(browser_workbench):
    wb = browser_workbench
    token = wb.user_token("olga")
    api = httpx.Client(base_url=wb.api_url, headers={"Authorization": f"token {token}"})
    assert api.post("/projects", json={"name": "olgas"}, timeout=60).status_code == 201
    assert wb.hub("GET", "/users/newcomer").status_code == 404

    r = api.put("/projects/olgas/collaborators/newcomer", json={"role": "viewer"})
    assert r.status_code == 200, r.text
    assert r.json() == {"user": "newcomer", "role": "viewer"}
    assert wb.hub("GET", "/users/newcomer").status_code == 200
    r = api.put("/projects/olgas/collaborators/Not%20Valid", json={"role": "viewer"})
    assert r.status_code == 400 and r.json()["field"] == "user", r.text


async def test_first_project_to_session_and_back(browser_workbench):
    from playwright.async_api import async_playwright, expect

    wb = browser_workbench
    wb.add_login(USER, PASSWORD)
    DOCS_IMAGES.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await login(browser, wb, USER, PASSWORD)

            # No project yet: the hub home (the default URL) calls to create the first one.
            await page.wait_for_url(re.compile(r"/hub/home"))
            first = page.locator("#workbench-first-project")
            await expect(first).to_contain_text("Create your first project")
            await page.screenshot(path=DOCS_IMAGES / "hub-home-first-project.png")

            # Its link leads to the Workbench page, whose form creates the project.
            await page.click("#workbench-create")
            await page.wait_for_url(re.compile(r"/services/workbench/"))
            await page.fill("#create-project input[name=name]", "first")
            await page.select_option("#create-project select[name=template]", "python-starter")
            await page.screenshot(path=DOCS_IMAGES / "workbench-create-project.png", full_page=True)
            async with page.expect_navigation(url=re.compile(r"/hub/home")):
                await page.click("#create-project [type=submit]")

            # The hub home lists it, stopped, with Start.
            row = page.locator("tr.workbench-project[data-project=first]")
            await expect(row).to_have_attribute("data-state", "stopped")
            await row.locator(".workbench-start").click()
            await expect(row).to_have_attribute("data-state", "running", timeout=120_000)
            await page.screenshot(path=DOCS_IMAGES / "hub-home-projects.png")

            # Open leads to JupyterLab in the project's session.
            await row.locator(".workbench-open").click()
            await page.wait_for_url(
                re.compile(rf"/user/{USER}/first/lab"), timeout=90_000, wait_until="commit"
            )
            await expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=60_000)

            # Stop stops it.
            await page.goto(f"{wb.url}/hub/home")
            await row.locator(".workbench-stop").click()
            await expect(row).to_have_attribute("data-state", "stopped", timeout=60_000)
            servers = wb.hub("GET", f"/users/{USER}").json()["servers"]
            assert "first" not in servers or not servers["first"]["ready"]

            # The default server's pages lead to the projects, never to its 400.
            for path in ("/hub/spawn", f"/hub/spawn/{USER}"):
                await page.goto(wb.url + path)
                text = await page.locator("body").inner_text()
                assert "Sessions run per project" in text and not _refused(text), text
                assert await page.locator("#spawn_form").count() == 0
            await page.screenshot(path=DOCS_IMAGES / "hub-spawn-default-server.png")
            await page.click("#workbench-projects-link")
            await page.wait_for_url(re.compile(r"/hub/home"))

            await page.goto(f"{wb.url}/hub/user/{USER}/")
            text = await page.locator("body").inner_text()
            assert "Sessions run per project" in text and not _refused(text), text
            await page.click("#start")
            await page.wait_for_url(re.compile(r"/hub/home"))
            await expect(row).to_be_visible()

            # A collaborator added before their first login sees the project once logged in.
            token = wb.user_token(USER)
            r = httpx.put(
                f"{wb.api_url}/projects/first/collaborators/fran",
                json={"role": "viewer"},
                headers={"Authorization": f"token {token}"},
            )
            assert r.status_code == 200, r.text
            wb.add_login("fran", "fran-pass-123")
            fran = await login(browser, wb, "fran", "fran-pass-123")
            await fran.wait_for_url(re.compile(r"/hub/home"))
            shared = fran.locator("tr.workbench-project[data-project=first]")
            await expect(shared).to_contain_text("viewer")
        finally:
            await browser.close()
