"""Enter a workload's sandbox: a private mount namespace, then the user's unix account.

Stdlib only: it runs in the runtime's supervisor (``shim.py``) just before ``exec`` and in a
session forked from the prewarm server, so it applies to a process that already exists. That
is why the workbench does not call ``bwrap`` here: bubblewrap builds its sandbox only around a
program it starts, and a prewarmed session is a fork, not a new program. :func:`enter` uses the
same kernel features bubblewrap uses (see ``docs/isolation.md``):

* a new mount namespace whose mounts do not propagate back to the host;
* an empty tmpfs over every hidden directory (the data directory: secrets, databases, users,
  other projects and homes, runtime state) and over each directory on the way to what the
  workload may see that its account could not traverse (``/root`` when Python lives there);
* the allowed directories bound back at their own path, read-only where the policy says;
* private ``/tmp``, ``/var/tmp`` and ``/dev/shm``; ``/proc`` mounted again with ``hidepid=2``,
  so a workload sees only its own account's processes (not other users' command lines);
* then the account: supplementary groups, gid, uid (all capabilities go with uid 0),
  ``no_new_privs`` (no set-uid program can give them back) and umask 007.

Mount points are created only inside those tmpfs mounts, never on the host.
"""

from __future__ import annotations

import ctypes
import os
import stat
from dataclasses import asdict, dataclass, field

CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_SET_NO_NEW_PRIVS = 38

#: Directories every workload gets as its own empty, world-writable (sticky) tmpfs.
PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")  # noqa: S108 (mounted over, not used)

_libc = ctypes.CDLL(None, use_errno=True)


class SandboxError(OSError):
    """The sandbox could not be set up; the workload must not start."""


@dataclass(frozen=True)
class Bind:
    """A directory the workload sees at its own path."""

    path: str
    read_only: bool = False


@dataclass(frozen=True)
class SandboxPolicy:
    """What one workload may see and whom it runs as (sent as JSON to the supervisor)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    hide: tuple[str, ...] = ()
    binds: tuple[Bind, ...] = ()
    umask: int = 0o007
    tmp: tuple[str, ...] = field(default=PRIVATE_TMP)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SandboxPolicy:
        return cls(
            uid=int(data["uid"]),
            gid=int(data["gid"]),
            groups=tuple(int(g) for g in data.get("groups", ())),
            hide=tuple(data.get("hide", ())),
            binds=tuple(Bind(b["path"], bool(b["read_only"])) for b in data.get("binds", ())),
            umask=int(data.get("umask", 0o007)),
            tmp=tuple(data.get("tmp", PRIVATE_TMP)),
        )


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    result = _libc.mount(
        source.encode() if source else None,
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    if result != 0:
        errno = ctypes.get_errno()
        raise SandboxError(errno, f"cannot mount {target}: {os.strerror(errno)}")


def under(path: str, parent: str) -> bool:
    """Whether `path` is `parent` or lies below it (both normalized, absolute)."""
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _traversable(path: str, policy: SandboxPolicy) -> bool:
    """Whether the policy's account could pass through directory `path` (host permissions)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True  # created inside a tmpfs of ours
    if st.st_uid == policy.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == policy.gid or st.st_gid in policy.groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def plan_masks(policy: SandboxPolicy) -> list[str]:
    """The directories to cover with an empty tmpfs, outermost first, none inside another."""
    masks = {os.path.realpath(p) for p in policy.hide if os.path.isdir(p)}
    for bind in policy.binds:
        parts = os.path.realpath(bind.path).split("/")
        for depth in range(2, len(parts)):
            ancestor = "/".join(parts[:depth])
            if not _traversable(ancestor, policy):
                masks.add(ancestor)
                break
    tmp = [os.path.realpath(t) for t in policy.tmp]
    chosen: list[str] = []
    for mask in sorted(masks, key=lambda p: (p.count("/"), p)):
        if mask == "/" or any(under(mask, t) for t in tmp):
            continue  # under a private tmp: hidden already
        if not any(under(mask, c) for c in chosen):
            chosen.append(mask)
    return chosen


def enter(policy: SandboxPolicy, cwd: str | None = None) -> None:
    """Turn this (root) process into the sandboxed workload; call it just before running it."""
    if os.geteuid() != 0:
        raise SandboxError(1, "the sandbox needs root: the workbench does not run as root")
    binds = sorted(
        {os.path.realpath(b.path): b for b in policy.binds}.items(),
        key=lambda item: item[0].count("/"),
    )
    masks = plan_masks(policy)
    if _libc.unshare(CLONE_NEWNS) != 0:
        errno = ctypes.get_errno()
        raise SandboxError(errno, f"cannot create a mount namespace: {os.strerror(errno)}")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # opened in the new namespace (a bind's source must be one of its mounts), before the
    # tmpfs mounts cover them
    sources = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path, _ in binds}
    for path in policy.tmp:
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for path in masks:
        _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for path, bind in binds:
        os.makedirs(path, mode=0o755, exist_ok=True)
        _mount(f"/proc/self/fd/{sources[path]}", path, None, MS_BIND | MS_REC)
        flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV
        _mount(None, path, None, flags | (MS_RDONLY if bind.read_only else 0))
    for fd in sources.values():
        os.close(fd)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
    os.setgroups(list(policy.groups))
    os.setresgid(policy.gid, policy.gid, policy.gid)
    os.setresuid(policy.uid, policy.uid, policy.uid)
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SandboxError(ctypes.get_errno(), "cannot set no_new_privs")
    os.umask(policy.umask)
    if cwd is not None:
        os.chdir(cwd)  # again: a directory entered before the binds is the host's, not ours


def supported() -> str:
    """Empty if this process can build sandboxes, else why not (checked in a child)."""
    if os.geteuid() != 0:
        return "the workbench does not run as root"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        error = b""
        try:
            if _libc.unshare(CLONE_NEWNS) != 0:
                error = os.strerror(ctypes.get_errno()).encode()
            else:
                _mount(None, "/", None, MS_REC | MS_PRIVATE)
                _mount("tmpfs", PRIVATE_TMP[0], "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
                _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
        except OSError as e:
            error = str(e).encode()
        os.write(write, error or b"ok")
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read().decode(errors="replace")
    os.waitpid(pid, 0)
    return "" if answer == "ok" else f"mount namespaces are unavailable: {answer}"
