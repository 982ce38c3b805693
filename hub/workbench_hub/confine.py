"""Keep the paths a user names inside the directory they belong to, symbolic links included.

Project files, a run's outputs and a build's directory can hold links planted by user code.
Whatever a session's contents API, the control plane or a build step reads, lists, copies or
writes there on a user's behalf goes through one of these:

- :func:`resolve_within` follows links, and refuses a path whose final location is outside;
- :func:`open_beneath` and the functions built on it follow no link at all below the root: each
  directory on the way and the file itself are opened with ``O_NOFOLLOW`` relative to the one
  before, so a link there, even one swapped in after a check, is refused, never followed.

The root itself is trusted (an administrator's directory): links in its own path are followed.
This module is imported by sessions and build steps too, so it needs only the standard library.
"""

import contextlib
import errno
import os
import secrets
import shutil
import stat
from pathlib import Path, PurePath
from typing import BinaryIO

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC


class PathEscape(ValueError):
    """A path leads outside the directory it must stay in, or through a link not followed."""


def _parts(relative: str | os.PathLike) -> tuple[str, ...]:
    text = os.fspath(relative)
    if "\x00" in text:
        raise PathEscape(f"{text!r} is not a valid path")
    path = PurePath(text)
    if path.is_absolute() or ".." in path.parts:
        raise PathEscape(f"{text} is not a path inside the directory")
    return path.parts


def beneath(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Absolute ``path`` relative to ``root``, compared as written; PathEscape if not under it."""
    absolute, base = os.path.abspath(path), os.path.abspath(root)
    if os.path.commonpath([absolute, base]) != base:
        raise PathEscape(f"{path} is not under {root}")
    return Path(os.path.relpath(absolute, base))


def resolve_within(
    root: str | os.PathLike, relative: str | os.PathLike, *, inside: str | os.PathLike = ""
) -> Path:
    """``root/relative`` with every link resolved; PathEscape unless it is in ``root/inside``.

    ``inside`` (default: ``root`` itself) is taken as written, so a directory that has been
    replaced by a link holds nothing. The final part need not exist (a file about to be made).
    """
    text = os.fspath(relative)
    if "\x00" in text or PurePath(text).is_absolute():
        raise PathEscape(f"{text!r} is not a relative path")
    base = Path(root).resolve()
    bound = base.joinpath(*_parts(inside))
    try:
        resolved = base.joinpath(text).resolve()
    except (OSError, RuntimeError):  # a loop of links
        raise PathEscape(f"{text} is a loop of symbolic links") from None
    if not resolved.is_relative_to(bound):
        raise PathEscape(f"{text} leads outside {bound}")
    return resolved


def _open_step(dir_fd: int, name: str, flags: int, mode: int, shown: str) -> int:
    try:
        return os.open(name, flags | os.O_NOFOLLOW | _CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            with contextlib.suppress(OSError):
                if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    raise PathEscape(f"{shown} is a symbolic link, which is not followed") from None
        raise


def _open_dirs(root: str | os.PathLike, parts: tuple[str, ...], create: bool = False) -> int:
    """A descriptor of directory ``root/parts…``, reached without following a link."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    try:
        for i, part in enumerate(parts):
            shown = "/".join(parts[: i + 1])
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
            step = _open_step(fd, part, _DIRECTORY, 0, shown)
            os.close(fd)
            fd = step
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_beneath(
    root: str | os.PathLike,
    relative: str | os.PathLike,
    flags: int = os.O_RDONLY,
    mode: int = 0o600,
) -> int:
    """``os.open(root/relative, flags, mode)`` following no link below ``root`` (PathEscape).

    The caller closes the descriptor.
    """
    parts = _parts(relative)
    if not parts:
        return os.open(root, flags | _CLOEXEC, mode)
    dir_fd = _open_dirs(root, parts[:-1])
    try:
        return _open_step(dir_fd, parts[-1], flags, mode, "/".join(parts))
    finally:
        os.close(dir_fd)


def read_beneath(root: str | os.PathLike, relative: str | os.PathLike) -> BinaryIO:
    """A regular file below ``root`` opened for reading, following no link (PathEscape).

    Anything else (a directory, a pipe) is FileNotFoundError: a pipe is never waited on.
    """
    fd = open_beneath(root, relative, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileNotFoundError(errno.ENOENT, "not a regular file", os.fspath(relative))
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def make_dirs(root: str | os.PathLike, relative: str | os.PathLike) -> None:
    """``mkdir -p root/relative``, following no link below ``root`` (PathEscape)."""
    os.close(_open_dirs(root, _parts(relative), create=True))


def remove_beneath(
    root: str | os.PathLike, relative: str | os.PathLike, ignore_errors: bool = False
) -> None:
    """Delete ``root/relative`` (a file or a whole tree; nothing if missing) without following
    links: a link is removed itself, never what it points to. ``ignore_errors`` as in
    ``shutil.rmtree``, for the tree only."""
    parts = _parts(relative)
    if not parts:
        raise PathEscape("the root itself is not removed")
    try:
        dir_fd = _open_dirs(root, parts[:-1])
    except FileNotFoundError:
        return
    try:
        try:
            info = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(parts[-1], ignore_errors=ignore_errors, dir_fd=dir_fd)
        else:
            os.unlink(parts[-1], dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def replace_file(
    root: str | os.PathLike, relative: str | os.PathLike, data: bytes, mode: int = 0o644
) -> None:
    """Write ``root/relative`` anew: into a new file beside it, then renamed over it, so a link
    planted there is replaced, never written through (PathEscape for a link on the way)."""
    parts = _parts(relative)
    if not parts:
        raise PathEscape("the root itself is not a file")
    dir_fd = _open_dirs(root, parts[:-1])
    tmp = f".{parts[-1]}.{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, parts[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)
