"""Project files: each project is the directory ``<project_root>/<name>``.

Directories are built under a hidden temporary name and renamed into place, so a failed
template copy or git clone leaves nothing behind.
"""

import asyncio
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from workbench_hub.names import InvalidName, validate_name

TEMPLATES_DIR = Path(__file__).parent / "project_templates"
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^/].*$")


class ProjectFilesError(Exception):
    """A project file operation that failed, with a message for the user."""

    def __init__(self, message: str, *, status: int = 400, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field


def project_path(root: str | Path, name: str) -> Path:
    """The directory of project `name`, which must resolve to a direct child of `root`."""
    try:
        validate_name(name)
    except InvalidName as e:
        raise ProjectFilesError(str(e), field="name") from None
    base = Path(root).resolve()
    path = (base / name).resolve()
    if path.parent != base:
        raise ProjectFilesError(f"project {name!r} resolves outside the project root", field="name")
    return path


def list_templates() -> list[dict]:
    """The built-in templates: ``[{"name", "description"}]`` from project_templates/index.json."""
    index = json.loads((TEMPLATES_DIR / "index.json").read_text())
    return [{"name": name, "description": index[name]} for name in sorted(index)]


def redact_url(url: str) -> str:
    """`url` without any user:password part, safe to log, audit or show."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def git_scheme(url: str) -> str:
    """The transport of a git URL (``ssh`` for the scp-like ``user@host:path`` form)."""
    if _SCP_LIKE.match(url):
        return "ssh"
    return urlsplit(url).scheme.lower()


def check_git_url(url: object, allowed_schemes: list[str]) -> str:
    """Return `url` if git may clone it with one of `allowed_schemes`."""
    if not isinstance(url, str) or not url or url.startswith("-") or any(c in url for c in "\0\n"):
        raise ProjectFilesError("git_url must be a repository URL", field="git_url")
    scheme = git_scheme(url)
    if scheme not in allowed_schemes:
        raise ProjectFilesError(
            f"git_url scheme {scheme or 'none'!r} is not allowed; use one of {allowed_schemes}",
            field="git_url",
        )
    return url


async def _run_blocking(func, *args):
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _staging_path(root: Path, name: str) -> Path:
    return root / f".creating-{name}-{secrets.token_hex(4)}"


async def _clone(url: str, target: Path, schemes: list[str], time_limit: float) -> None:
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": ":".join(schemes),
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
    }
    process = await asyncio.create_subprocess_exec(
        "git",
        "clone",
        "--depth",
        "1",
        "--",
        url,
        str(target),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        async with asyncio.timeout(time_limit):
            _, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise ProjectFilesError(
            f"git clone did not finish within {time_limit:g}s", field="git_url"
        ) from None
    if process.returncode != 0:
        lines = [
            line.strip()
            for line in stderr.decode(errors="replace").splitlines()
            if line.strip() and not line.startswith("Cloning into")
        ]
        detail = " ".join(lines)[-1000:] or f"exit status {process.returncode}"
        raise ProjectFilesError(
            f"git clone failed: {detail.replace(url, redact_url(url))}", field="git_url"
        )


async def create_project_dir(
    root: str | Path,
    name: str,
    *,
    template: str = "empty",
    git_url: str | None = None,
    git_schemes: list[str] = (),
    git_timeout: float = 300,
) -> Path:
    """Create the directory of project `name`: empty, from a template, or a git clone.

    Raises ProjectFilesError (with nothing left on disk) when any step fails.
    """
    path = project_path(root, name)
    base = path.parent
    await _run_blocking(lambda: base.mkdir(parents=True, exist_ok=True))
    if path.exists():
        raise ProjectFilesError(
            f"a directory for project {name!r} already exists", status=409, field="name"
        )
    if git_url is None and template == "empty":
        await _run_blocking(path.mkdir)
        return path
    staging = _staging_path(base, name)
    try:
        if git_url is not None:
            await _clone(git_url, staging, list(git_schemes), git_timeout)
        else:
            source = TEMPLATES_DIR / template
            if template not in {t["name"] for t in list_templates()} or not source.is_dir():
                raise ProjectFilesError(f"no built-in template {template!r}", field="template")
            await _run_blocking(shutil.copytree, source, staging)
        if path.exists():
            raise ProjectFilesError(
                f"a directory for project {name!r} already exists", status=409, field="name"
            )
        await _run_blocking(os.rename, staging, path)
    except BaseException:
        await _run_blocking(_remove_tree, staging)
        raise
    return path


async def remove_project_dir(root: str | Path, name: str) -> None:
    """Delete the directory of project `name` (renamed aside first, so the name frees at once)."""
    path = project_path(root, name)
    if not path.exists():
        return
    trash = path.parent / f".deleting-{name}-{secrets.token_hex(4)}"
    await _run_blocking(os.rename, path, trash)
    await _run_blocking(_remove_tree, trash)
