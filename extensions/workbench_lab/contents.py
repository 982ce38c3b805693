"""A contents manager that refuses every change to the project's files."""

from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from tornado import web

READ_ONLY_MESSAGE = "this project is read-only for your role"


def _refuse():
    return web.HTTPError(403, READ_ONLY_MESSAGE)


class ReadOnlyContentsManager(AsyncLargeFileManager):
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
