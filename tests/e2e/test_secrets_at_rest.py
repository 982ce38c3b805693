"""Every secret `workbench up` keeps is readable only by its own account, and none is on a
command line (where any local user could read it with `ps`): docs/isolation.md."""

import secrets
import stat

import httpx
import psycopg
import pytest

from tests.harness import Workbench

pytestmark = pytest.mark.e2e


def test_secrets_are_private_and_on_no_command_line(postgres):
    password = "pw-" + secrets.token_hex(8)
    name = postgres.new_database().rsplit("/", 1)[1]
    role = f"wb_{secrets.token_hex(3)}"
    with psycopg.connect(postgres.admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute(f'ALTER DATABASE "{name}" OWNER TO {role}')
    url = f"postgresql+psycopg://{role}:{password}@127.0.0.1:{postgres.port}/{name}"
    wb = Workbench(db_url=url).start()
    try:
        token = wb.user_token("alice")
        r = httpx.post(
            f"{wb.api_url}/projects",
            json={"name": "p"},
            headers={"Authorization": f"token {token}"},
            timeout=60,
        )
        assert r.status_code == 201, r.text  # the control plane found its database
        data = wb.data_dir.resolve()
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        kept = {path.name: path for path in (data / "secrets").iterdir()}
        assert {"service-token", "proxy-token", "db-url", "jupyterhub_cookie_secret"} <= set(kept)
        for path in [*kept.values(), data / "users.json", data / "jupyterhub_config.py"]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        values = {
            "database password": password,
            "service token": (data / "secrets" / "service-token").read_text().strip(),
            "proxy token": (data / "secrets" / "proxy-token").read_text().strip(),
        }
        for proc in wb.descendants():
            command = " ".join(proc.cmdline())
            for what, value in values.items():
                assert value not in command, f"the {what} is on the command line of {command!r}"
    finally:
        wb.stop()
