"""The `workbench` SDK as notebook code uses it, against the control-plane double."""

import pytest
import tornado.testing

import workbench
from tests.extensions.control_plane import TOKEN


def test_current_project_comes_from_the_session(in_session, control_plane):
    project = workbench.current_project()
    assert (project["name"], project["role"]) == ("churn", "contributor")
    assert control_plane.requests == [
        ("/services/workbench/api/v1/projects/churn", f"token {TOKEN}")
    ]


def test_projects_list_and_get(in_session, control_plane):
    assert [(p["name"], p["role"]) for p in workbench.projects.list()] == [
        ("churn", "contributor"),
        ("fraud", "viewer"),
    ]
    assert workbench.projects.get("fraud")["description"] == "the fraud project"


def test_errors_carry_the_servers_status_and_message(in_session, control_plane):
    with pytest.raises(workbench.WorkbenchError) as caught:
        workbench.projects.get("missing")
    assert (caught.value.status, caught.value.message) == (404, "no project named 'missing'")
    assert str(caught.value) == "404: no project named 'missing'"


def test_server_failures_raise_with_the_message(in_session, control_plane):
    control_plane.failure = (500, "database is locked")
    with pytest.raises(workbench.WorkbenchError, match=r"^500: database is locked$"):
        workbench.projects.list()


def test_explicit_client_with_a_wrong_token_is_refused(control_plane):
    client = workbench.Client(api_url=control_plane.api_url, token="wrong")
    with client, pytest.raises(workbench.WorkbenchError) as caught:
        client.projects.list()
    assert caught.value.status == 403
    assert "wrong" not in repr(client)


def test_unreachable_workbench_is_a_workbench_error():
    sock, port = tornado.testing.bind_unused_port()
    sock.close()
    client = workbench.Client(api_url=f"http://127.0.0.1:{port}/api/v1", token=TOKEN)
    with pytest.raises(workbench.WorkbenchError, match="could not reach the workbench") as caught:
        client.projects.list()
    assert caught.value.status is None


@pytest.mark.parametrize("missing", ["WORKBENCH_API_URL", "WORKBENCH_TOKEN", "WORKBENCH_PROJECT"])
def test_outside_a_session_the_error_names_the_missing_variable(in_session, monkeypatch, missing):
    monkeypatch.delenv(missing)
    with pytest.raises(workbench.NotInSessionError) as caught:
        workbench.current_project()
    assert str(caught.value) == f"not inside a workbench session: {missing} is not set"
