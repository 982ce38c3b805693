"""The walls of docs/isolation.md on their own: accounts, groups and the sandbox of a workload
started by the real local runtime (real processes, real `useradd`, real mount namespaces)."""

import grp
import os
import pwd
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from traitlets.config import Config

from workbench_hub.isolation.accounts import UnixAccounts, unix_name
from workbench_hub.isolation.sandbox import SandboxPolicy, supported
from workbench_hub.runtime.base import VolumeMount, WorkloadSpec
from workbench_hub.runtime.local import LocalProcessRuntime

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or bool(supported()), reason="needs root and mount namespaces"
)


@pytest.fixture
def names():
    """Unique hub user and project names; their accounts and groups are deleted afterwards."""
    tag = secrets.token_hex(3)
    made = {"users": [f"u{tag}a", f"u{tag}b"], "project": f"p{tag}"}
    yield made
    for user in made["users"]:
        subprocess.run(["userdel", unix_name("wb-", user)], capture_output=True, check=False)
    subprocess.run(
        ["groupdel", unix_name("wbp-", made["project"])], capture_output=True, check=False
    )


@pytest.fixture
def data(tmp_path):
    data = tmp_path / "data"
    (data / "secrets").mkdir(parents=True)
    (data / "secrets" / "service-token").write_text("the-service-token")
    (data / "workbench.sqlite").write_text("a database")
    (data / "projects" / "other").mkdir(parents=True)
    (data / "projects" / "other" / "private.txt").write_text("someone else's")
    return data


def make_runtime(data: Path) -> LocalProcessRuntime:
    c = Config()
    c.Isolation.enabled = True
    c.Isolation.hidden_paths = [str(data)]
    c.Isolation.project_root = str(data / "projects")
    c.UnixAccounts.home_dir_template = str(data / "homes" / "{username}")
    c.UnixAccounts.uid_record = str(data / "unix-uids")
    return LocalProcessRuntime(config=c, state_dir=str(data / "runtime"), poll_interval=0.05)


ATTEMPTS = textwrap.dedent(
    """
    import json, os
    def read(p):
        try:
            return open(p).read()
        except OSError as e:
            return type(e).__name__
    def write(p):
        try:
            open(p, "a").write("x")
            return "written"
        except OSError as e:
            return type(e).__name__
    data = os.environ["DATA"]
    print(json.dumps({
        "uid": os.getuid(),
        "groups": os.getgroups(),
        "home": os.environ["HOME"],
        "token": read(data + "/secrets/service-token"),
        "db": read(data + "/workbench.sqlite"),
        "other": read(data + "/projects/other/private.txt"),
        "own": read("mine.txt"),
        "write_own": write("new.txt"),
        "write_home": write(os.environ["HOME"] + "/h.txt"),
        "tmp": sorted(os.listdir("/tmp")),
        "pids": [p for p in os.listdir("/proc") if p.isdigit()],
        "data_dir": sorted(os.listdir(data)),
    }))
    """
)


async def run(runtime, data, names, read_only=False):
    user, project = names["users"][0], names["project"]
    project_dir = data / "projects" / project
    project_dir.mkdir(parents=True, exist_ok=True)
    (project_dir / "mine.txt").write_text("my project")
    (Path("/tmp") / "host-tmp-file").write_text("on the host")
    spec = WorkloadSpec(
        name=f"w{secrets.token_hex(4)}",
        kind="job-run",
        user=user,
        project=project,
        command=[sys.executable, "-c", ATTEMPTS],
        working_dir=str(project_dir),
        env={"DATA": str(data)},
        volumes=[VolumeMount(str(project_dir), str(project_dir), read_only=read_only)],
    )
    await runtime.start(spec)
    status = await runtime.wait(spec.name)
    lines = [line async for line in runtime.logs(spec.name)]
    assert status.phase == "succeeded", lines
    import json

    return json.loads(lines[-1]), project_dir


async def test_a_workload_sees_only_its_project_and_home(data, names):
    result, project_dir = await run(make_runtime(data), data, names)
    account = pwd.getpwnam(unix_name("wb-", names["users"][0]))
    group = grp.getgrnam(unix_name("wbp-", names["project"]))
    assert result["uid"] == account.pw_uid and result["uid"] >= 70000
    assert result["groups"] == [group.gr_gid]
    assert result["home"] == str(data / "homes" / names["users"][0])
    # the data directory is not there: secrets, databases, other projects
    assert result["token"] == result["db"] == result["other"] == "FileNotFoundError"
    assert result["data_dir"] == ["homes", "projects"]
    assert result["own"] == "my project"
    assert result["write_own"] == result["write_home"] == "written"
    assert "host-tmp-file" not in result["tmp"]  # a private /tmp
    assert len(result["pids"]) == 1  # only its own process (hidepid)
    # what it wrote belongs to the project's group, for every collaborator
    made = (project_dir / "new.txt").stat()
    assert (made.st_uid, made.st_gid) == (account.pw_uid, group.gr_gid)
    assert made.st_mode & 0o660 == 0o660 and not made.st_mode & 0o007
    project = project_dir.stat()
    assert project.st_gid == group.gr_gid and project.st_mode & 0o7777 == 0o2770
    assert (data / "secrets" / "service-token").read_text() == "the-service-token"


async def test_a_read_only_volume_cannot_be_written(data, names):
    result, project_dir = await run(make_runtime(data), data, names, read_only=True)
    assert result["own"] == "my project"
    assert result["write_own"] == "OSError"  # EROFS: read-only at the mount level
    assert not (project_dir / "new.txt").exists()


async def test_a_sandbox_that_cannot_be_built_fails_the_workload(data, names):
    runtime = make_runtime(data)
    runtime.isolation.extra_paths = []
    project_dir = data / "projects" / names["project"]
    project_dir.mkdir(parents=True)
    spec = WorkloadSpec(
        name="outside",
        kind="job-run",
        user=names["users"][0],
        project=names["project"],
        command=[sys.executable, "-c", "print('ran')"],
        working_dir="/",  # in none of its volumes
        volumes=[VolumeMount(str(project_dir), str(project_dir))],
    )
    with pytest.raises(ValueError, match="in none of the volumes"):
        await runtime.start(spec)


def test_uids_are_never_reused_and_a_deleted_users_home_is_kept(data, names):
    accounts = UnixAccounts(
        home_dir_template=str(data / "homes" / "{username}"), uid_record=str(data / "unix-uids")
    )
    first, second = names["users"]
    earlier = data / "homes" / first / ".jupyter"  # a home used before isolation was on
    earlier.mkdir(parents=True)
    (earlier / "settings.json").write_text("{}")
    a = accounts.ensure_user(first)
    assert (earlier / "settings.json").stat().st_uid == a.uid
    assert accounts.ensure_user(first) == a  # found, not made again
    Path(a.home, "work.txt").write_text("keep me")
    kept = accounts.remove_user(first)
    with pytest.raises(KeyError):
        pwd.getpwnam(a.name)
    assert Path(kept, "work.txt").read_text() == "keep me"
    assert Path(kept).stat().st_uid == 0 and not Path(a.home).exists()
    b = accounts.ensure_user(second)
    assert b.uid > a.uid  # the deleted uid may still own project files


def test_unix_names_are_safe():
    assert unix_name("wb-", "alice") == "wb-alice"
    odd = unix_name("wb-", "Alice.Smith@example.org")
    assert len(odd) <= 32 and odd.startswith("wb-alice-smith")
    assert unix_name("wbp-", "a" * 63) != unix_name("wbp-", "a" * 62)
    assert all(len(unix_name("wbp-", "x" * n)) <= 32 for n in range(1, 64))


def test_policies_travel_as_json():
    policy = SandboxPolicy(uid=70001, gid=70001, groups=(70002,), hide=("/data",))
    assert SandboxPolicy.from_dict(policy.to_dict()) == policy
