"""The `workbench` command line against a real workbench: tables, --json, clear errors."""

import json
import subprocess
import sys

import pytest

from tests.hub.conftest import unique


@pytest.fixture(scope="module")
def running(workbench_factory):
    return workbench_factory()


@pytest.fixture(scope="module")
def cli(running):
    token = running.user_token("cli-user")

    def run(*argv, input=None, token=token):
        return running.cli(token, *argv, input=input)

    running.user_token("cli-friend")
    return run


def test_projects_create_list_show_delete(cli):
    name = unique("cli")
    created = cli("projects", "create", name, "--description", "from the CLI", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["name"] == name

    table = cli("projects", "list")
    assert table.returncode == 0
    header, *rows = table.stdout.splitlines()
    assert header.split()[:4] == ["name", "owner", "visibility", "role"]
    assert any(row.split()[:4] == [name, "user:cli-user", "private", "admin"] for row in rows)

    listed = json.loads(cli("projects", "list", "--json").stdout)
    assert name in {p["name"] for p in listed}
    shown = cli("projects", "show", name)
    assert "from the CLI" in shown.stdout

    refused = cli("projects", "delete", name, input="")
    assert refused.returncode == 1
    assert "--yes" in refused.stderr
    assert cli("projects", "show", name).returncode == 0, "nothing deleted without --yes"

    deleted = cli("projects", "delete", name, "--yes")
    assert deleted.returncode == 0, deleted.stderr
    gone = cli("projects", "show", name)
    assert gone.returncode == 1
    assert gone.stderr.startswith("workbench: 404:")


def test_collaborators_add_list_remove(cli):
    name = unique("cli")
    assert cli("projects", "create", name).returncode == 0
    added = cli("projects", "collaborators", "add", name, "cli-friend", "--role", "operator")
    assert added.returncode == 0, added.stderr
    rows = json.loads(cli("projects", "collaborators", "list", name, "--json").stdout)
    assert {"user": "cli-friend", "role": "operator"} in rows
    assert cli("projects", "collaborators", "remove", name, "cli-friend").returncode == 0
    rows = json.loads(cli("projects", "collaborators", "list", name, "--json").stdout)
    assert "cli-friend" not in {r["user"] for r in rows}


def test_errors_are_one_clear_line(cli):
    bad = cli("projects", "create", "Not_A_Name")
    assert bad.returncode == 1
    assert bad.stderr.startswith("workbench: 400:") and "lowercase" in bad.stderr
    unauthorized = cli("projects", "list", token="not-a-token")
    assert unauthorized.returncode == 1
    assert unauthorized.stderr.startswith("workbench: 401:") or unauthorized.stderr.startswith(
        "workbench: 403:"
    )


def test_users_and_upgrade_db_on_a_fresh_data_dir(tmp_path):
    def local(*argv, input=None):
        return subprocess.run(
            [sys.executable, "-m", "workbench_hub.cli", *argv, "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
        )

    upgraded = local("upgrade-db")
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.startswith("database upgraded from empty to ")
    again = local("upgrade-db")
    head = upgraded.stdout.split()[-1]
    assert again.stdout.strip() == f"database upgraded from {head} to {head}"

    short = local("users", "add", "erin", "--password-stdin", input="short\n")
    assert short.returncode == 1 and "at least 8 characters" in short.stderr
    assert local("users", "add", "erin", "--password-stdin", input="long-enough\n").returncode == 0
    users = json.loads(local("users", "list", "--json").stdout)
    assert users == [{"name": "erin", "admin": False}]
    stored = (tmp_path / "users.json").read_text()
    assert "long-enough" not in stored and "scrypt$" in stored
