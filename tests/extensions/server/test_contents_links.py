"""Symbolic links in a session's project: the contents API never leaves the project directory."""

import json

import pytest
from tornado.httpclient import HTTPClientError

from tests.links import SECRET
from workbench_lab.contents import ConfinedContentsManager, ReadOnlyContentsManager

REFUSED = "leads outside the project directory through a symbolic link"


@pytest.fixture
def project(jp_root_dir, outside):
    """The session's project: a file, links out (a directory and a file) and links inside."""
    (jp_root_dir / "train.py").write_text("print('hello')\n")
    (jp_root_dir / "linkdir").symlink_to(outside)
    (jp_root_dir / "leak.txt").symlink_to(outside / "secret.txt")
    (jp_root_dir / "alias.py").symlink_to("train.py")
    (jp_root_dir / "data").mkdir()
    (jp_root_dir / "data" / "rows.csv").write_text("a,b\n")
    (jp_root_dir / "data" / "up").symlink_to("../../outside")
    return jp_root_dir


def outside_unchanged(outside):
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == SECRET


async def refused(jp_fetch, *parts, codes=(404,), **kwargs):
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch(*parts, **kwargs)
    assert caught.value.code in codes
    assert SECRET.encode() not in (caught.value.response.body or b"")
    return caught.value.response.body


def put_body(content):
    return json.dumps({"type": "file", "format": "text", "content": content})


@pytest.fixture
def read_only():
    """Whether the session is read-only; tests that hold in both sessions parametrize it."""
    return False


@pytest.fixture
def session_env(session_env, read_only):
    return {**session_env, "WORKBENCH_READ_ONLY": "1"} if read_only else session_env


both_sessions = pytest.mark.parametrize("read_only", [False, True], ids=["read-write", "read-only"])


@both_sessions
async def test_every_session_gets_a_confined_manager(jp_serverapp, read_only):
    manager = jp_serverapp.contents_manager
    assert isinstance(manager, ConfinedContentsManager)
    assert isinstance(manager, ReadOnlyContentsManager) is read_only


@both_sessions
async def test_listings_leave_out_links_that_lead_outside(jp_fetch, project, outside):
    listing = json.loads((await jp_fetch("api", "contents")).body)
    assert sorted(c["name"] for c in listing["content"]) == ["alias.py", "data", "train.py"]
    data = json.loads((await jp_fetch("api", "contents", "data")).body)
    assert [c["name"] for c in data["content"]] == ["rows.csv"]
    outside_unchanged(outside)


@both_sessions
async def test_links_inside_the_project_still_work(jp_fetch, project):
    model = json.loads((await jp_fetch("api", "contents", "alias.py")).body)
    assert model["content"] == "print('hello')\n"


@both_sessions
@pytest.mark.parametrize(
    "parts",
    [
        ("api", "contents", "leak.txt"),
        ("api", "contents", "linkdir"),
        ("api", "contents", "linkdir", "secret.txt"),
        ("api", "contents", "data", "up", "secret.txt"),
        ("files", "leak.txt"),
        ("files", "linkdir", "secret.txt"),
    ],
)
async def test_reading_through_a_link_out_is_refused_with_404(jp_fetch, project, outside, parts):
    # tornado 6.6 refuses /files/ through a link out itself, with 403
    body = await refused(jp_fetch, *parts, codes=(404,) if parts[0] == "api" else (403, 404))
    if parts[0] == "api":
        assert REFUSED in json.loads(body)["message"]
    outside_unchanged(outside)


@both_sessions
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "leak.txt", put_body("overwritten")),
        ("PUT", "linkdir/new.txt", put_body("planted")),
        ("POST", "linkdir", json.dumps({"type": "file"})),
        ("POST", "", json.dumps({"copy_from": "leak.txt"})),
        ("PATCH", "linkdir/secret.txt", json.dumps({"path": "stolen.txt"})),
        ("PATCH", "train.py", json.dumps({"path": "linkdir/train.py"})),
        ("DELETE", "linkdir/secret.txt", None),
    ],
)
async def test_changes_through_a_link_out_are_refused(
    jp_fetch, project, outside, read_only, method, path, body
):
    # a read-only session refuses some of these with 403 before it looks at the path
    codes = (403, 404) if read_only else (404,)
    response = await refused(
        jp_fetch, "api", "contents", path, method=method, body=body, codes=codes
    )
    message = json.loads(response)["message"]
    assert REFUSED in message or (read_only and "read-only" in message)
    outside_unchanged(outside)
    assert (project / "train.py").read_text() == "print('hello')\n"
    assert not (project / "stolen.txt").exists()


@both_sessions
async def test_no_checkpoints_are_listed_or_made_through_a_link(jp_fetch, project, outside):
    response = await jp_fetch("api", "contents", "linkdir", "secret.txt", "checkpoints")
    assert json.loads(response.body) == []
    outside_unchanged(outside)


class TestReadWriteSession:
    async def test_copying_a_directory_leaves_out_its_links_out(self, jp_fetch, project, outside):
        response = await jp_fetch(
            "api", "contents", method="POST", body=json.dumps({"copy_from": "data"})
        )
        copied = project / json.loads(response.body)["path"]
        assert sorted(p.name for p in copied.iterdir()) == ["rows.csv"]
        outside_unchanged(outside)

    async def test_checkpoints_are_not_kept_through_a_link(self, jp_fetch, project, outside):
        (project / ".ipynb_checkpoints").symlink_to(outside)
        body = await refused(
            jp_fetch, "api", "contents", "train.py", "checkpoints", method="POST", body=""
        )
        assert "symbolic link" in json.loads(body)["message"]
        listed = await jp_fetch("api", "contents", "train.py", "checkpoints")
        assert json.loads(listed.body) == []
        outside_unchanged(outside)

    async def test_restoring_a_checkpoint_that_is_a_link_is_refused(
        self, jp_fetch, project, outside
    ):
        (project / ".ipynb_checkpoints").mkdir()
        (project / ".ipynb_checkpoints" / "train-checkpoint.py").symlink_to(outside / "secret.txt")
        await refused(
            jp_fetch,
            "api",
            "contents",
            "train.py",
            "checkpoints",
            "checkpoint",
            method="POST",
            body="",
        )
        assert (project / "train.py").read_text() == "print('hello')\n"
