"""Project directories: confinement, templates, git clones that leave nothing behind on failure."""

import os

import pytest

from workbench_hub.projects import (
    ProjectFilesError,
    check_git_url,
    create_project_dir,
    list_templates,
    project_path,
    redact_url,
    remove_project_dir,
)


@pytest.mark.parametrize("name", ["..", ".", "a/../../etc", "/etc", "a/b", "", "UP"])
def test_project_path_rejects_escapes(tmp_path, name):
    with pytest.raises(ProjectFilesError) as e:
        project_path(tmp_path, name)
    assert e.value.field == "name"


def test_project_path_rejects_symlink_out_of_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "evil").symlink_to(outside)
    with pytest.raises(ProjectFilesError, match="outside the project root"):
        project_path(root, "evil")
    assert project_path(root, "fine") == (root / "fine").resolve()


def test_templates_are_listed_with_descriptions():
    templates = {t["name"]: t["description"] for t in list_templates()}
    assert templates.get("python-starter")


async def test_create_empty_and_template(tmp_path):
    empty = await create_project_dir(tmp_path, "blank")
    assert empty.is_dir() and not any(empty.iterdir())
    starter = await create_project_dir(tmp_path, "starter", template="python-starter")
    assert {"README.md", "analysis.ipynb", "data.csv"} <= set(os.listdir(starter))
    assert sorted(os.listdir(tmp_path)) == ["blank", "starter"]


async def test_create_refuses_existing_directory(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(ProjectFilesError) as e:
        await create_project_dir(tmp_path, "taken", template="python-starter")
    assert e.value.status == 409
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


async def test_unknown_template_leaves_nothing(tmp_path):
    with pytest.raises(ProjectFilesError) as e:
        await create_project_dir(tmp_path, "x", template="nope")
    assert e.value.field == "template"
    assert os.listdir(tmp_path) == []


async def test_git_clone(tmp_path, git_repo):
    path = await create_project_dir(tmp_path, "cloned", git_url=git_repo, git_schemes=["file"])
    assert (path / "README.md").read_text() == "# cloned\n"
    assert (path / ".git").is_dir()
    assert os.listdir(tmp_path) == ["cloned"]


async def test_failed_git_clone_leaves_nothing_and_reports_git(tmp_path):
    url = f"file://{tmp_path}/does-not-exist.git"
    with pytest.raises(ProjectFilesError) as e:
        await create_project_dir(tmp_path, "broken", git_url=url, git_schemes=["file"])
    assert e.value.field == "git_url"
    assert "git clone failed" in e.value.message and "does-not-exist" in e.value.message
    assert os.listdir(tmp_path) == []


async def test_git_protocol_not_allowed_is_refused_by_git_too(tmp_path, git_repo):
    # even if a caller skipped check_git_url, GIT_ALLOW_PROTOCOL stops other transports
    with pytest.raises(ProjectFilesError):
        await create_project_dir(tmp_path, "sneaky", git_url=git_repo, git_schemes=["https"])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://example.org/r.git", True),
        ("git@example.org:team/r.git", True),
        ("ssh://git@example.org/r.git", True),
        ("file:///srv/r.git", False),
        ("ext::sh -c touch% /tmp/pwned", False),
        ("--upload-pack=touch /tmp/x", False),
        ("/srv/r.git", False),
        ("", False),
        (5, False),
    ],
)
def test_check_git_url(url, ok):
    schemes = ["https", "ssh", "git"]
    if ok:
        assert check_git_url(url, schemes) == url
    else:
        with pytest.raises(ProjectFilesError):
            check_git_url(url, schemes)


def test_redact_url_hides_credentials():
    assert (
        redact_url("https://me:s3cret@example.org:8443/r.git") == "https://example.org:8443/r.git"
    )
    assert redact_url("https://example.org/r.git") == "https://example.org/r.git"


async def test_remove_project_dir(tmp_path):
    path = await create_project_dir(tmp_path, "gone", template="python-starter")
    await remove_project_dir(tmp_path, "gone")
    assert not path.exists() and os.listdir(tmp_path) == []
    await remove_project_dir(tmp_path, "gone")  # already gone: no error
