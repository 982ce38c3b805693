"""Contents managers of a workbench session: confined to the project, and read-only on top."""

import os
import shutil
from contextvars import ContextVar

from anyio.to_thread import run_sync
from jupyter_server.base.handlers import AuthenticatedFileHandler
from jupyter_server.services.contents.filecheckpoints import AsyncFileCheckpoints
from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from tornado import web
from traitlets import default

from workbench_hub.confine import PathEscape, resolve_within

READ_ONLY_MESSAGE = "this project is read-only for your role"
OUTSIDE_MESSAGE = "{path} leads outside the project directory through a symbolic link: refused"

# The directory being listed, so `should_list` (given a bare name) can leave out the links
# that lead outside; a context variable keeps concurrent requests apart.
_listing: ContextVar[str | None] = ContextVar("workbench_listing", default=None)


def _inside(root: str, os_path: str) -> bool:
    try:
        resolve_within(root, os.path.relpath(os_path, os.path.abspath(root)))
    except PathEscape:
        return False
    return True


class _Confined:
    """`_get_os_path`, through which every contents and checkpoint operation finds its file,
    refuses (404) a path whose resolved location is outside `root_dir`."""

    def _get_os_path(self, path):
        os_path = super()._get_os_path(path)
        if not _inside(self.root_dir, os_path):
            raise web.HTTPError(404, OUTSIDE_MESSAGE.format(path=path))
        return os_path


class ConfinedFileCheckpoints(_Confined, AsyncFileCheckpoints):
    """Checkpoints in `.ipynb_checkpoints/`, never kept or read through a link there."""

    def checkpoint_path(self, checkpoint_id, path):
        checkpoint = super().checkpoint_path(checkpoint_id, path)
        if os.path.islink(os.path.dirname(checkpoint)) or os.path.islink(checkpoint):
            raise web.HTTPError(404, f"the checkpoint of {path} is a symbolic link: refused")
        return checkpoint

    async def list_checkpoints(self, path):
        try:
            return await super().list_checkpoints(path)
        except web.HTTPError:  # behind a link: none (so renames and deletes go on)
            return []


class ConfinedFileHandler(AuthenticatedFileHandler):
    """`/files/…` downloads, refused (404) when a link leads outside the root.

    tornado 6.6 refuses those itself (403); older releases, which pyproject.toml allows, do not.
    """

    def validate_absolute_path(self, root, absolute_path):
        path = super().validate_absolute_path(root, absolute_path)
        if not _inside(root, path):
            raise web.HTTPError(404, OUTSIDE_MESSAGE.format(path=self.path))
        return path


class ConfinedContentsManager(_Confined, AsyncLargeFileManager):
    """The default contents manager, kept inside the project directory: a path whose resolved
    location (symbolic links followed) leaves `root_dir` is refused with 404 for reading,
    saving, renaming, deleting, copying and checkpoints, and left out of listings. Links that
    stay inside work as usual; copying a directory leaves out the links in it that lead out.

    Like the read-only manager, this guards the server's APIs only: code run in a kernel is
    limited by the file system permissions the spawner gives the session.
    """

    @default("checkpoints_class")
    def _checkpoints_class_default(self):
        return ConfinedFileCheckpoints

    @default("files_handler_class")
    def _files_handler_class_default(self):
        return ConfinedFileHandler

    def should_list(self, name):
        directory = _listing.get()
        if directory is not None and not _inside(self.root_dir, os.path.join(directory, name)):
            return False
        return super().should_list(name)

    async def _dir_model(self, path, content=True):
        token = _listing.set(self._get_os_path(path))
        try:
            return await super()._dir_model(path, content=content)
        finally:
            _listing.reset(token)

    async def _copy_dir(self, from_path, to_path_original, to_name, to_path):
        def links_out(directory, names):
            return {n for n in names if not _inside(self.root_dir, os.path.join(directory, n))}

        source = self._get_os_path(from_path.strip("/"))
        target = f"{self._get_os_path(to_path_original.strip('/'))}/{to_name}"
        try:
            await run_sync(lambda: shutil.copytree(source, target, ignore=links_out))
        except OSError as e:
            raise web.HTTPError(400, f"Can't copy '{from_path}' into '{to_path}': {e}") from e
        return await self.get(to_path, content=False)


def _refuse():
    return web.HTTPError(403, READ_ONLY_MESSAGE)


class ReadOnlyContentsManager(ConfinedContentsManager):
    """Serve the project's files but refuse to save, create, rename, copy or delete them.

    Models are reported with `writable: false` so JupyterLab shows documents as read-only.
    This guards the contents API only: code run in a kernel is limited by the file system
    permissions the spawner gives the session.
    """

    async def get(self, path, content=True, type=None, format=None, require_hash=False):
        model = await super().get(
            path, content=content, type=type, format=format, require_hash=require_hash
        )
        model["writable"] = False
        if model["type"] == "directory" and model.get("content"):
            for child in model["content"]:
                child["writable"] = False
        return model

    async def save(self, model, path=""):
        raise _refuse()

    async def delete_file(self, path):
        raise _refuse()

    async def rename_file(self, old_path, new_path):
        raise _refuse()

    async def copy(self, from_path, to_path=None):
        raise _refuse()

    async def create_checkpoint(self, path):
        raise _refuse()

    async def restore_checkpoint(self, checkpoint_id, path):
        raise _refuse()

    async def delete_checkpoint(self, checkpoint_id, path):
        raise _refuse()
