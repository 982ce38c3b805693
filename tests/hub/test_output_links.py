"""Run outputs with links the run planted: a viewer sees only what is in the output directory."""

import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.hub.conftest import Api, unique
from tests.links import REPLACE_OUTPUT_DIR

SECRET = "secret outside the project\n"
VICTIM = "a log outside the project\n"
# links in the output directory: to a file outside, to a directory outside, over output.log
# (which the engine writes after the run), and one that stays inside
PLANT = """\
import os, pathlib, sys
out, outside = pathlib.Path(os.environ["WORKBENCH_OUTPUT_DIR"]), pathlib.Path(sys.argv[1])
(out / "result.txt").write_text("42")
(out / "inner.txt").symlink_to("result.txt")
(out / "leak.txt").symlink_to(outside / "secret-outside.txt")
(out / "sub").mkdir()
(out / "sub" / "up").symlink_to(outside)
(out / "output.log").symlink_to(outside / "victim.log")
print("planted")
"""
FINAL = ("succeeded", "failed", "timed_out", "stopped")


def outputs_url(project: str, job: str, *rest) -> str:
    return "/".join([f"/projects/{project}/jobs/{job}/runs/1/outputs", *rest])


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("outside")
    (directory / "secret-outside.txt").write_text(SECRET)
    (directory / "victim.log").write_text(VICTIM)
    return directory


def unchanged(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["secret-outside.txt", "victim.log"]
    assert (outside / "secret-outside.txt").read_text() == SECRET
    assert (outside / "victim.log").read_text() == VICTIM


@pytest.fixture(scope="module")
def project(user, outside) -> tuple[str, Api]:
    """A project of alice with both scripts, and vic, one of its viewers."""
    alice = user("alice", groups=["eng"])
    name = unique("links")
    path = Path(alice("POST", "/projects", 201, json={"name": name})["path"])
    (path / "plant.py").write_text(PLANT)
    (path / "replace.py").write_text(REPLACE_OUTPUT_DIR)
    user("vic")  # known to the hub before joining
    alice("PUT", f"/projects/{name}/collaborators/vic", 200, json={"role": "viewer"})
    return name, alice


def run_to_the_end(alice: Api, project: str, target: str, outside: Path) -> str:
    job = unique(target.removesuffix(".py"))
    body = {"name": job, "target": target, "arguments": [str(outside)]}
    alice("POST", f"/projects/{project}/jobs", 201, json=body)
    alice("POST", f"/projects/{project}/jobs/{job}/runs", 201)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        run = alice("GET", f"/projects/{project}/jobs/{job}/runs/1", 200)
        if run["state"] in FINAL:
            assert run["state"] == "succeeded", run
            return job
        time.sleep(0.2)
    raise AssertionError(f"run 1 of {job} did not end: {run}")


def test_links_leading_out_of_the_outputs_are_neither_listed_nor_served(project, user, outside):
    name, alice = project
    viewer = user("vic")
    job = run_to_the_end(alice, name, "plant.py", outside)
    files = viewer("GET", outputs_url(name, job), 200)["files"]
    assert sorted(f["path"] for f in files) == ["inner.txt", "output.log", "result.txt"]
    log = viewer.raw("GET", outputs_url(name, job, "output.log"))
    assert log.status_code == 200 and log.text == "planted\n"  # the link replaced, not followed
    assert viewer.raw("GET", outputs_url(name, job, "inner.txt")).text == "42"
    for path in ("leak.txt", "sub/up/secret-outside.txt", "sub/up/victim.log"):
        message = viewer.error("GET", outputs_url(name, job, quote(path, safe="")), 404)
        assert "leads outside the run's output directory" in message, message
        assert SECRET not in message
    unchanged(outside)


def test_an_output_directory_replaced_by_a_link_shows_nothing(project, user, outside):
    name, alice = project
    viewer = user("vic")
    job = run_to_the_end(alice, name, "replace.py", outside)
    assert viewer("GET", outputs_url(name, job), 200) == {"files": []}
    for path in ("secret-outside.txt", "output.log"):
        message = viewer.error("GET", outputs_url(name, job, path), 404)
        assert "leads outside the run's output directory" in message, message
    logs = viewer.raw("GET", f"/projects/{name}/jobs/{job}/runs/1/logs")
    assert logs.status_code == 200 and "replaced" in logs.text and SECRET not in logs.text
    unchanged(outside)
