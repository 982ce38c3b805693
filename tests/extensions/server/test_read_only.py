"""Read-only sessions (viewers, operators): the contents API serves files but changes none."""

import json

import pytest
from tornado.httpclient import HTTPClientError

MESSAGE = "this project is read-only for your role"


@pytest.fixture
def project_file(jp_root_dir):
    path = jp_root_dir / "train.py"
    path.write_text("print('hello')\n")
    return path


def put_body(content):
    return json.dumps({"type": "file", "format": "text", "content": content})


class TestReadOnlySession:
    @pytest.fixture
    def session_env(self, session_env):
        return {**session_env, "WORKBENCH_READ_ONLY": "1"}

    async def test_files_can_be_read_and_are_marked_read_only(self, jp_fetch, project_file):
        model = json.loads((await jp_fetch("api", "contents", "train.py")).body)
        assert model["content"] == "print('hello')\n"
        assert model["writable"] is False
        listing = json.loads((await jp_fetch("api", "contents")).body)
        assert [(c["name"], c["writable"]) for c in listing["content"]] == [("train.py", False)]

    @pytest.mark.parametrize(
        ("method", "path", "body"),
        [
            ("PUT", "train.py", put_body("overwritten")),
            ("PUT", "new.py", put_body("x = 1")),
            ("POST", "", json.dumps({"type": "notebook"})),
            ("POST", "", json.dumps({"copy_from": "train.py"})),
            ("PATCH", "train.py", json.dumps({"path": "renamed.py"})),
            ("DELETE", "train.py", None),
            ("POST", "train.py/checkpoints", ""),
        ],
    )
    async def test_changes_are_refused_with_403(
        self, jp_fetch, jp_root_dir, project_file, method, path, body
    ):
        with pytest.raises(HTTPClientError) as caught:
            await jp_fetch("api", "contents", path, method=method, body=body)
        assert caught.value.code == 403
        assert json.loads(caught.value.response.body)["message"] == MESSAGE
        assert [p.name for p in jp_root_dir.iterdir()] == ["train.py"]
        assert project_file.read_text() == "print('hello')\n"


async def test_writable_session_saves_files(jp_fetch, jp_root_dir):
    response = await jp_fetch("api", "contents", "new.py", method="PUT", body=put_body("x = 1"))
    assert response.code == 201
    assert (jp_root_dir / "new.py").read_text() == "x = 1"
