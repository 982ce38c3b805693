"""Model builds with real processes (LocalProcessRuntime) and a real database (SQLite and
PostgreSQL): the snapshot rules, the install step, the check, and adoption after a restart."""

import asyncio
import json
import os
import stat
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.models.rows import build_row, deployment_row, model_row
from workbench_hub import audit
from workbench_hub.db import Database
from workbench_hub.models.builder import RESTART_LOST, ModelBuilder, outcome
from workbench_hub.orm import Model, ModelBuild, ModelDeployment, Project
from workbench_hub.runtime.base import WorkloadStatus
from workbench_hub.runtime.local import LocalProcessRuntime
from workbench_serving.build import take_snapshot

MODEL = "def predict(request):\n    return {'echo': request}\n"
TIMEOUT = 120


class BuildEnv:
    """A database, a runtime, a project root and a ModelBuilder, with helpers to seed rows."""

    def __init__(self, url: str, tmp: Path, **traits) -> None:
        self.tmp = tmp
        self.db = Database(url)
        self.runtime = LocalProcessRuntime(state_dir=str(tmp / "runtime"), poll_interval=0.05)
        self.project_root = tmp / "projects"
        self.project_root.mkdir(exist_ok=True)
        self.builder = self.make_builder(**traits)

    def make_builder(self, **traits) -> ModelBuilder:
        traits = {"poll_interval": 0.05, "stop_grace": 1.0} | traits
        return ModelBuilder(
            db=self.db,
            runtime=self.runtime,
            project_root=str(self.project_root),
            data_dir=str(self.tmp / "data"),
            **traits,
        )

    def write(self, project: str, path: str, text: str | bytes, mode: int | None = None) -> Path:
        target = self.project_root / project / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            target.write_bytes(text)
        else:
            target.write_text(text)
        if mode is not None:
            target.chmod(mode)
        return target

    async def project(self, name: str = "demo", files: dict[str, str] | None = None) -> int:
        (self.project_root / name).mkdir()
        for path, text in (files or {}).items():
            self.write(name, path, text)
        async with self.db.session() as s:
            project = Project(name=name, owner_kind="user", owner_name="alice")
            s.add(project)
            await s.commit()
            return project.id

    async def model(
        self, project_id: int, name: str = "echo", file: str = "model.py", function="predict"
    ) -> int:
        async with self.db.session() as s:
            model = model_row(project_id, name=name, file=file, function=function)
            s.add(model)
            await s.commit()
            return model.id

    async def queue(self, model_id: int, **fields) -> int:
        """Add a queued build of the model (its file and function unless given)."""
        async with self.db.session() as s:
            model = await s.get(Model, model_id)
            build = build_row(model, model.next_build_number, **{"state": "queued", **fields})
            model.next_build_number += 1
            s.add(build)
            await s.commit()
            return build.id

    async def build(self, model_id: int, **fields) -> ModelBuild:
        """Queue a build, run it, and return its record once it has ended."""
        build_id = await self.queue(model_id, **fields)
        await self.builder.start_build(build_id)
        async with asyncio.timeout(TIMEOUT):
            return await self.builder.wait(build_id)

    async def get(self, build_id: int) -> ModelBuild:
        async with self.db.session() as s:
            return await s.get(ModelBuild, build_id)

    async def close(self) -> None:
        await self.builder.stop()
        for status in await self.runtime.list():
            if status.phase in ("pending", "running"):
                await self.runtime.stop(status.name, grace=0)
        await self.db.dispose()


@pytest.fixture
async def make_env(db_url, tmp_path):
    """Build a BuildEnv (ModelBuilder traits as keyword arguments); closed at the end."""
    envs = []

    def make(**traits) -> BuildEnv:
        env = BuildEnv(db_url, tmp_path, **traits)
        envs.append(env)
        return env

    yield make
    for env in envs:
        await env.close()


@pytest.fixture
async def env(make_env):
    return make_env()


def tree(root: Path) -> set[str]:
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() or path.is_symlink()
    }


def writable(path: Path) -> bool:
    return bool(path.lstat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


async def wait_for(check, timeout: float = 30):
    async with asyncio.timeout(timeout):
        while not (value := await check()):
            await asyncio.sleep(0.05)
        return value


async def _building_with_workload(env: BuildEnv, build_id: int) -> ModelBuild | None:
    build = await env.get(build_id)
    status = build.workload and await env.runtime.status(build.workload)
    return build if status and status.phase == "running" else None


# ---- the build step's snapshot rules, without processes


def test_snapshot_symlinks(tmp_path):
    project = tmp_path / "project"
    (project / "lib").mkdir(parents=True)
    (project / "model.py").write_text(MODEL)
    (project / "lib" / "util.py").write_text("X = 1\n")
    (project / "secret.txt").write_text("ignored\n")
    (project / ".workbenchignore").write_text("secret.txt\n")
    (project / "alias.py").symlink_to("model.py")
    (project / "libs").symlink_to("lib")
    (project / "etc").symlink_to("/etc")
    (project / "passwd").symlink_to("/etc/passwd")
    (project / "broken").symlink_to("nowhere")
    (project / "hidden").symlink_to("secret.txt")

    snapshot = take_snapshot(project, tmp_path / "src")
    src = tmp_path / "src"
    assert tree(src) == {".workbenchignore", "model.py", "lib/util.py", "alias.py", "libs"}
    assert os.readlink(src / "alias.py") == "model.py"
    assert os.readlink(src / "libs") == "lib"
    assert (src / "libs" / "util.py").read_text() == "X = 1\n"
    assert {link["path"] for link in snapshot.links} == {"alias.py", "libs"}
    skipped = "\n".join(snapshot.skipped)
    assert "etc: it points outside the project" in skipped
    assert "passwd: it points outside the project" in skipped
    assert "broken: it points nowhere" in skipped
    assert "hidden: its target secret.txt is not in the build" in skipped
    assert [entry["path"] for entry in snapshot.files] == [
        ".workbenchignore",
        "lib/util.py",
        "model.py",
    ]
    assert snapshot.bytes == sum((project / f["path"]).stat().st_size for f in snapshot.files)


def test_outcome_messages():
    def status(phase, exit_code=None, message=""):
        return WorkloadStatus(
            name="b",
            kind="model-build",
            user="alice",
            project="demo",
            phase=phase,
            labels={},
            created=None,
            exit_code=exit_code,
            message=message,
        )

    assert outcome(status("succeeded", 0), []) == ("succeeded", "")
    assert outcome(status("failed", 1), ["x", "error: install step failed (exit 1)"]) == (
        "failed",
        "install step failed (exit 1)",
    )
    assert outcome(status("failed", 139), ["Segmentation fault"]) == (
        "failed",
        "the build step exited with code 139: Segmentation fault",
    )
    assert outcome(status("lost"), []) == ("failed", RESTART_LOST)
    assert outcome(None, []) == ("failed", "the build's workload disappeared from the runtime")
    assert outcome(status("stopped", 143), [], timed_out=5) == (
        "failed",
        "the build timed out after 5 s",
    )


# ---- builds through the runtime


async def test_good_build(env):
    project = await env.project(
        files={
            "model.py": "from helper import double\n\ndef predict(request):\n"
            "    return double(request)\n",
            "helper.py": "def double(x):\n    return 2 * x\n",
            "data/table.csv": "a,b\n1,2\n",
            ".git/config": "[core]\n",
            ".git/objects/ab/cdef": "blob",
            ".workbench/jobs/x/runs/1/output.log": "old output\n",
            "__pycache__/helper.cpython-311.pyc": "bytecode",
            "data/stale.pyc": "bytecode",
            "notebooks/.ipynb_checkpoints/a-checkpoint.ipynb": "{}",
            "notebooks/a.ipynb": "{}",
        }
    )
    env.write("demo", "run.sh", "#!/bin/sh\necho hi\n", mode=0o755)
    model = await env.model(project)
    build = await env.build(model)

    assert build.state == "succeeded", build.message
    assert build.message == ""
    assert build.started_at <= build.finished_at
    path = Path(build.path)
    assert path == Path(env.builder.build_dir, build.crn.rsplit(":", 1)[1])
    assert Path(env.builder.build_dir) == env.tmp / "data" / "model-builds"
    src = path / "src"
    assert tree(src) == {
        "model.py",
        "helper.py",
        "data/table.csv",
        "notebooks/a.ipynb",
        "run.sh",
    }
    assert not any(writable(p) for p in src.rglob("*") if p.is_file())
    assert stat.S_IMODE((src / "run.sh").stat().st_mode) == 0o555
    assert (src / "helper.py").read_text() == "def double(x):\n    return 2 * x\n"
    assert not (path / "env").exists()

    manifest = json.loads((path / "build.json").read_text())
    assert manifest["file"] == "model.py" and manifest["function"] == "predict"
    assert sorted(f["path"] for f in manifest["files"]) == sorted(tree(src))
    assert manifest["bytes"] == sum(f["bytes"] for f in manifest["files"])
    assert manifest["python"] == sys.executable
    assert manifest["environment"] is False
    assert manifest["started"] <= manifest["finished"]

    log = await env.builder.read_log(build)
    assert log == (path / "build.log").read_text()
    assert env.builder.log_path(build) == path / "build.log"
    assert "snapshot: 5 files" in log
    assert "install: no requirements.txt" in log
    assert "predict(request) in model.py can serve requests" in log
    assert log.rstrip().splitlines()[-1].startswith("build: succeeded in")
    # the log survives the workload, which is removed
    assert await env.runtime.status(build.workload) is None

    async with env.db.session() as s:
        [event] = await audit.query(s, action="model.build.succeeded")
    assert event.object_id == "demo/echo/1" and event.actor == "workbench"


async def test_workbenchignore(env):
    project = await env.project(
        files={
            "model.py": MODEL,
            "data/big.csv": "x\n",
            "keep.csv": "k\n",
            "other.csv": "o\n",
            "notes.txt": "n\n",
            "docs/notes.txt": "n\n",
            "tmp/scratch.py": "",
            ".workbenchignore": "# comment\ndata/\n*.csv\n!keep.csv\n/notes.txt\ntmp\n",
        }
    )
    model = await env.model(project)
    build = await env.build(model)
    assert build.state == "succeeded", build.message
    assert tree(Path(build.path, "src")) == {
        ".workbenchignore",
        "model.py",
        "keep.csv",
        "docs/notes.txt",
    }

    env.write("demo", ".workbenchignore", "model.py\n")
    build = await env.build(model)
    assert build.state == "failed"
    assert build.message == (
        "file 'model.py' is left out of the build by .workbenchignore or the default ignores"
    )


async def test_nested_git_repository(env):
    project = await env.project(
        files={"model.py": MODEL, "vendor/lib/.git/HEAD": "ref: main\n", "vendor/lib/x.py": ""}
    )
    model = await env.model(project)
    build = await env.build(model)
    assert build.state == "failed"
    assert "Git repository in vendor/lib/.git/" in build.message
    assert "list it in .workbenchignore" in build.message
    assert not Path(build.path, "src").exists()
    assert not Path(build.path, "build.json").exists()
    log = await env.builder.read_log(build)
    assert log.rstrip().splitlines()[-1] == "error: " + build.message

    env.write("demo", ".workbenchignore", "/vendor/lib/.git/\n")
    build = await env.build(model)
    assert build.state == "succeeded", build.message
    assert "vendor/lib/x.py" in tree(Path(build.path, "src"))


async def test_size_limits(make_env):
    env = make_env(max_file_bytes=1000, max_build_bytes=1500)
    project = await env.project(files={"model.py": MODEL})
    env.write("demo", "data/big.bin", b"\0" * 2000)
    model = await env.model(project)
    served = await env.queue(model, state="succeeded", path=str(env.tmp / "old-build"))
    async with env.db.session() as s:  # the deployment serving the model's previous build
        deployment = deployment_row(model, served)
        s.add(deployment)
        await s.commit()
        before = {c.name: getattr(deployment, c.name) for c in ModelDeployment.__table__.columns}
    build = await env.build(model)
    assert build.state == "failed"
    async with env.db.session() as s:  # a failed build leaves it alone
        deployment = await s.get(ModelDeployment, deployment.id)
        after = {c.name: getattr(deployment, c.name) for c in ModelDeployment.__table__.columns}
    assert after == before
    assert build.message.startswith("file data/big.bin is 2 KiB, over the limit of 1000 bytes")
    assert not Path(build.path, "src").exists()
    assert "error: file data/big.bin" in Path(build.path, "build.log").read_text()

    (env.project_root / "demo" / "data" / "big.bin").unlink()
    for name in "abc":
        env.write("demo", f"data/{name}.bin", b"\0" * 600)
    build = await env.build(model)
    assert build.state == "failed"
    assert build.message.startswith("the build's files total 1.8 KiB, over the limit of 1.5 KiB")
    assert "largest: data/a.bin (600 bytes)" in build.message


async def test_check_failures(make_env):
    env = make_env(max_concurrent_builds=2)
    project = await env.project(
        files={
            "model.py": MODEL,
            "two.py": "def predict(a, b):\n    return a\n",
            "broken.py": "raise RuntimeError('boom')\n",
            "exits.py": "import sys\nsys.exit(3)\n",
        }
    )
    cases = {
        ("missing.py", "predict"): "file 'missing.py' does not exist in the project",
        ("model.py", "nope"): "'model.py' has no function 'nope'",
        ("two.py", "predict"): "function 'predict' must take one argument (the request), but"
        " its signature is (a, b)",
        ("broken.py", "predict"): "importing 'broken.py' failed: RuntimeError: boom",
        ("exits.py", "predict"): "importing 'exits.py' called sys.exit(3)",
    }
    ids = {}
    for i, (file, function) in enumerate(cases):
        model = await env.model(project, name=f"m{i}", file=file, function=function)
        ids[file, function] = await env.queue(model)
    for build_id in ids.values():
        await env.builder.start_build(build_id)
    for key, build_id in ids.items():
        async with asyncio.timeout(TIMEOUT):
            build = await env.builder.wait(build_id)
        assert (build.state, build.message) == ("failed", cases[key])
        assert not Path(build.path, "src").exists()


async def test_requirements_installed(make_env):
    env = make_env(pip_args=["--no-index"])
    project = await env.project(
        files={
            "model.py": "import numpy\n\ndef predict(request):\n"
            "    return float(numpy.sum(request))\n",
            "requirements.txt": "numpy\n",
        }
    )
    model = await env.model(project)
    build = await env.build(model)
    assert build.state == "succeeded", build.message
    python = Path(build.path, "env", "bin", "python")
    assert python.exists()
    manifest = json.loads(Path(build.path, "build.json").read_text())
    assert manifest["environment"] is True and manifest["python"] == str(python)
    log = await env.builder.read_log(build)
    assert "Requirement already satisfied: numpy" in log
    assert f"with {python}" in log


async def test_requirements_install_fails(make_env):
    env = make_env(pip_args=["--no-index"])
    project = await env.project(
        files={"model.py": MODEL, "requirements.txt": "workbench-no-such-package-4711==1.0\n"}
    )
    model = await env.model(project)
    build = await env.build(model)
    assert build.state == "failed"
    assert build.message.startswith("install step failed (exit 1): ERROR:")
    assert "workbench-no-such-package-4711" in build.message
    assert not Path(build.path, "env").exists()
    assert "ERROR: No matching distribution" in await env.builder.read_log(build)


async def test_build_timeout(make_env):
    env = make_env(build_timeout=1.5)
    project = await env.project(files={"model.py": "import time\ntime.sleep(60)\n\n" + MODEL})
    model = await env.model(project)
    build = await env.build(model)
    assert build.state == "failed"
    assert build.message == "the build timed out after 1.5 s"
    assert "check: importing predict" in await env.builder.read_log(build)
    assert await env.runtime.status(build.workload) is None


async def test_restart_adopts_a_running_build(make_env):
    first = make_env()
    project = await first.project(
        files={"model.py": "import time\ntime.sleep(2)\nprint('imported')\n\n" + MODEL}
    )
    model = await first.model(project)
    build_id = await first.queue(model)
    await first.builder.start_build(build_id)

    build = await wait_for(lambda: _building_with_workload(first, build_id))
    assert build.state == "building" and build.started_at is not None

    async def partial_log():  # from the runtime while building
        return "build: predict in model.py" in await first.builder.read_log(build)

    await wait_for(partial_log)
    await first.builder.stop()  # the control plane goes away; the workload keeps running
    assert (await first.get(build_id)).state == "building"
    assert (await first.runtime.status(build.workload)).phase == "running"

    second = make_env()  # a new control plane on the same database and runtime state
    await second.builder.start()
    async with asyncio.timeout(TIMEOUT):
        build = await second.builder.wait(build_id)
    assert build.state == "succeeded", build.message
    log = Path(build.path, "build.log").read_text()
    assert "imported" in log and "build: succeeded" in log
    assert await second.runtime.status(build.workload) is None


async def test_restart_fails_lost_builds_and_starts_queued(env):
    project = await env.project(files={"model.py": MODEL})
    model = await env.model(project)
    lost = await env.queue(model, state="building", workload="build-999-abcdef")
    never = await env.queue(model, state="building")
    queued = await env.queue(model)
    await env.builder.start()
    for build_id in (lost, never):
        build = await env.get(build_id)
        assert (build.state, build.message) == ("failed", RESTART_LOST)
        assert build.finished_at is not None
    async with asyncio.timeout(TIMEOUT):
        build = await env.builder.wait(queued)
    assert build.state == "succeeded", build.message


async def test_restart_records_a_build_that_ended_meanwhile(make_env):
    first = make_env()
    project = await first.project(files={"model.py": "import time\ntime.sleep(1)\n" + MODEL})
    model = await first.model(project)
    build_id = await first.queue(model)
    await first.builder.start_build(build_id)
    build = await wait_for(lambda: _building_with_workload(first, build_id))
    await first.builder.stop()
    await first.runtime.wait(build.workload)  # it ends while no control plane watches it

    second = make_env()
    await second.builder.start()
    async with asyncio.timeout(TIMEOUT):
        build = await second.builder.wait(build_id)
    assert build.state == "succeeded", build.message
    assert "build: succeeded" in await second.builder.read_log(build)
    async with second.db.session() as s:
        states = (await s.scalars(select(ModelBuild.state))).all()
    assert states == ["succeeded"]
