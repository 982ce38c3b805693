"""Without isolation, `workbench up` says so and serves only its administrator unless told to
serve everyone anyway (docs/isolation.md, "Without isolation")."""

import re

import httpx
import pytest

from tests.harness import Workbench

pytestmark = pytest.mark.e2e


def try_login(wb: Workbench, name: str, password: str) -> httpx.Response:
    client = httpx.Client(base_url=wb.url, timeout=60, follow_redirects=True)
    page = client.get("/hub/login")
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    data = {"username": name, "password": password, "_xsrf": xsrf.group(1) if xsrf else ""}
    return client.post("/hub/login", data=data)


@pytest.mark.parametrize("allow", [False, True])
def test_without_isolation_only_the_admin_logs_in_unless_allowed(allow):
    config = 'c.WorkbenchUp.isolation = "off"\n'
    if allow:
        config += "c.WorkbenchUp.allow_shared_unix_user = True\n"
    wb = Workbench(extra_config=config).start()
    try:
        started = wb.log_path.read_text()
        assert "WARNING: no walls between users: isolation is off" in started
        assert ("Only 'admin' may log in" in started) is not allow
        wb.add_login("erin", "erin-pass-12")
        admin = try_login(wb, "admin", wb.admin_password)
        assert admin.status_code == 200 and "/hub/login" not in str(admin.url)
        other = try_login(wb, "erin", "erin-pass-12")
        if allow:
            assert other.status_code == 200 and "/hub/login" not in str(other.url)
        else:
            assert other.status_code == 403, other.text[:300]
            assert "only its administrator may log in" in other.text
            assert "Traceback" not in other.text
    finally:
        wb.stop()
