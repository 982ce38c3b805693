"""Fixtures shared by the SDK and server-extension tests: the control-plane double."""

import pytest

from tests.extensions.control_plane import TOKEN, USER, ControlPlaneDouble


@pytest.fixture(scope="session")
def _control_plane_server():
    double = ControlPlaneDouble().start()
    yield double
    double.stop()


@pytest.fixture
def control_plane(_control_plane_server):
    """The control-plane double, emptied, with the projects `churn` and `fraud`."""
    _control_plane_server.reset()
    _control_plane_server.add_project("churn", role="contributor")
    _control_plane_server.add_project("fraud", role="viewer")
    return _control_plane_server


@pytest.fixture
def session_env(control_plane):
    """The variables the spawner sets in a session of `alice/churn` (docs/architecture.md)."""
    return {
        "WORKBENCH_API_URL": control_plane.api_url,
        "WORKBENCH_PROJECT": "churn",
        "WORKBENCH_TOKEN": TOKEN,
        "JUPYTERHUB_API_URL": control_plane.hub_api_url,
        "JUPYTERHUB_USER": USER,
    }


@pytest.fixture
def in_session(session_env, monkeypatch):
    """Run the test inside the session environment (and nothing left from the caller's)."""
    for name in ("WORKBENCH_READ_ONLY", "JUPYTERHUB_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in session_env.items():
        monkeypatch.setenv(name, value)
    return session_env
