"""Fixtures for runtime tests: a LocalProcessRuntime on a fresh state directory."""

import sys

import pytest

from workbench_hub.runtime.base import WorkloadSpec
from workbench_hub.runtime.local import LocalProcessRuntime


@pytest.fixture
async def runtime(tmp_path):
    rt = LocalProcessRuntime(state_dir=str(tmp_path / "state"), poll_interval=0.05)
    yield rt
    for status in await rt.list():  # leave no process behind, whatever the test did
        if status.phase == "running":
            await rt.stop(status.name, grace=0)


@pytest.fixture
def spec(tmp_path):
    """Build a spec running ``python -c code`` in tmp_path."""

    def make(name: str, code: str, **kwargs) -> WorkloadSpec:
        values = {"kind": "job-run", "user": "alice", "project": "demo"}
        values.update(kwargs)
        values.setdefault("working_dir", str(tmp_path))
        return WorkloadSpec(name=name, command=[sys.executable, "-c", code], **values)

    return make
