"""Symbolic links planted in a project, a snapshot or a run's outputs: neither the job engine
nor a model build copies, reads, writes or deletes anything outside through them."""

import json
import shutil
from pathlib import Path

import pytest

from tests.links import REPLACE_OUTPUT_DIR, SECRET
from workbench_hub.jobs.snapshots import SnapshotStore
from workbench_serving import build


def unchanged(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == SECRET


# ---------------------------------------------------------------- snapshots


@pytest.fixture
def project(tmp_path, outside):
    root = tmp_path / "project"
    (root / "lib").mkdir(parents=True)
    (root / "main.py").write_text("print('main')\n")
    (root / "lib" / "util.py").write_text("X = 1\n")
    (root / "alias.py").symlink_to("main.py")
    (root / "libs").symlink_to("lib")
    (root / "lib" / "back.py").symlink_to("../main.py")
    (root / "leak.txt").symlink_to(outside / "secret.txt")
    (root / "outdir").symlink_to(outside)
    (root / "lib" / "up").symlink_to("../../outside")
    return root


def manifest(store: SnapshotStore, code_hash: str) -> dict:
    return {entry["path"]: entry for entry in store._load(code_hash)}


def stored_objects(store: SnapshotStore) -> list[bytes]:
    return [p.read_bytes() for p in (store.root / "objects").rglob("*") if p.is_file()]


def test_snapshot_keeps_links_inside_and_leaves_out_links_out(tmp_path, project, outside):
    store = SnapshotStore(tmp_path / "snapshots")
    code_hash = store.snapshot(project)
    entries = manifest(store, code_hash)
    assert set(entries) == {"main.py", "lib/util.py", "alias.py", "libs", "lib/back.py"}
    assert entries["alias.py"] == {"path": "alias.py", "link": "main.py"}
    assert entries["libs"] == {"path": "libs", "link": "lib"}
    assert entries["lib/back.py"] == {"path": "lib/back.py", "link": "../main.py"}
    assert not any(SECRET.encode() in data for data in stored_objects(store))

    work = tmp_path / "work"
    store.materialize(code_hash, work, project)
    assert (work / "alias.py").read_text() == "print('main')\n"
    assert (work / "libs" / "util.py").read_text() == "X = 1\n"
    assert (work / "libs").resolve() == (work / "lib").resolve()
    assert not (work / "leak.txt").exists() and not (work / "leak.txt").is_symlink()
    assert not (work / "outdir").is_symlink() and not (work / "lib" / "up").is_symlink()
    unchanged(outside)


def test_materialize_makes_no_link_that_leads_out_of_the_working_directory(
    tmp_path, project, outside
):
    store = SnapshotStore(tmp_path / "snapshots")
    code_hash = store.snapshot(project)
    # a manifest written before links were confined, and a chain that only leads out once
    # every link of it exists (`a` is the directory itself, `b` its parent)
    path = store._manifest(code_hash)
    files = json.loads(path.read_text())["files"]
    files += [
        {"path": "etc", "link": "/etc"},
        {"path": "up", "link": "../../outside"},
        {"path": "b", "link": "a/.."},
        {"path": "a", "link": "."},
    ]
    path.write_text(json.dumps({"files": files}))
    work = tmp_path / "work"
    store.materialize(code_hash, work, project)
    assert {p.name for p in work.iterdir() if p.is_symlink()} == {"alias.py", "libs", "a"}
    assert (work / "lib" / "back.py").read_text() == "print('main')\n"


def test_a_large_file_now_behind_a_link_out_is_not_linked(tmp_path, project, outside):
    store = SnapshotStore(tmp_path / "snapshots", max_file_bytes=4)
    (project / "data").mkdir()
    (project / "data" / "big.csv").write_text("a,b,c\n")
    code_hash = store.snapshot(project)
    assert "large" in manifest(store, code_hash)["data/big.csv"]
    (project / "data" / "big.csv").unlink()
    (project / "data").rmdir()
    (project / "data").symlink_to(outside)
    (outside / "big.csv").write_text("outside\n")
    work = tmp_path / "work"
    store.materialize(code_hash, work, project)
    assert not (work / "data" / "big.csv").is_symlink()


def test_a_build_never_copies_through_a_link_that_appears_while_it_copies(
    tmp_path, outside, monkeypatch
):
    project = tmp_path / "model"
    (project / "sub").mkdir(parents=True)
    (project / "sub" / "secret.txt").write_text("inside\n")
    plan = build._plan

    def planned_then_swapped(root, spec, max_file_bytes):
        planned = plan(root, spec, max_file_bytes)
        shutil.rmtree(root / "sub")
        (root / "sub").symlink_to(outside)
        return planned

    monkeypatch.setattr(build, "_plan", planned_then_swapped)
    snapshot = build.take_snapshot(project, tmp_path / "src")
    assert not (tmp_path / "src" / "sub" / "secret.txt").exists()
    assert snapshot.files == []
    assert snapshot.skipped == [
        "sub/secret.txt: a symbolic link appeared on its path while the build copied the"
        " project; left out"
    ]
    unchanged(outside)


# ---------------------------------------------------------------- runs

# a run that plants links in its output directory, then replaces a file the engine writes
PLANT = """\
import os, pathlib, sys
out, outside = pathlib.Path(os.environ["WORKBENCH_OUTPUT_DIR"]), pathlib.Path(sys.argv[1])
(out / "output.log").symlink_to(outside / "secret.txt")
print("planted")
"""


async def lines(env, run) -> list[str]:
    return [line async for line in env.engine.logs(run)]


async def test_the_log_replaces_a_link_the_run_planted(env, outside):
    project = await env.project(files={"plant.py": PLANT})
    job = await env.job(project, "plant", "plant.py", arguments=[str(outside)])
    run = await env.ended((await env.engine.trigger(job, user="alice")).id)
    assert run.state == "succeeded"
    log = Path(run.output_dir, "output.log")
    assert not log.is_symlink() and log.read_text() == "planted\n"
    unchanged(outside)


async def test_a_replaced_output_directory_is_neither_written_read_nor_pruned(make_env, outside):
    env = make_env(output_retention=1)
    project = await env.project(files={"replace.py": REPLACE_OUTPUT_DIR})
    job = await env.job(project, "replace", "replace.py", arguments=[str(outside)])
    (outside / "output.log").write_text("a log outside\n")
    first = await env.ended((await env.engine.trigger(job, user="alice")).id)
    assert first.state == "succeeded" and Path(first.output_dir).is_symlink()
    assert (outside / "output.log").read_text() == "a log outside\n"  # not written through
    await env.runtime.remove(first.workload)
    assert await lines(env, first) == []  # nor read through
    second = await env.ended((await env.engine.trigger(job, user="alice")).id)
    assert (await env.run(first.id)).output_dir is None  # pruned: the link, not what it shows
    assert not Path(first.output_dir).exists() and not Path(first.output_dir).is_symlink()
    assert Path(second.output_dir).is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == ["output.log", "secret.txt"]
    assert (outside / "output.log").read_text() == "a log outside\n"


async def test_a_link_on_the_way_to_the_outputs_fails_the_run(env, outside):
    project = await env.project(files={"main.py": "print('hi')\n"})
    job = await env.job(project, "j", "main.py")
    workbench = env.project_root / "demo" / ".workbench"
    workbench.mkdir()
    (workbench / "jobs").symlink_to(outside)
    run = await env.ended((await env.engine.trigger(job, user="alice")).id)
    assert run.state == "failed" and run.workload is None
    assert run.message == (
        "cannot make the run's output directory:"
        " demo/.workbench/jobs is a symbolic link, which is not followed"
    )
    unchanged(outside)
