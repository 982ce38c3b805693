"""Unix accounts for hub users and unix groups for projects, created on demand (as root).

A hub user ``alice`` runs as the account ``<user_prefix>alice`` (uid in ``[uid_min, uid_max]``,
its own primary group, no password, no login shell, home ``home_dir_template``). A project
``churn`` is the group ``<group_prefix>churn``: its directory is owned by root and that group,
mode ``2770`` (set-gid, so everything created in it belongs to the group), and every file in it
is group-readable and -writable. A workload of the project gets that group as its one
supplementary group; the sandbox makes a viewer's view of it read-only. Names longer than the
32 characters unix allows are cut and suffixed with a hash.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import re
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from traitlets import Int, Unicode
from traitlets.config import LoggingConfigurable

_UNSAFE = re.compile(r"[^a-z0-9_-]")
_MAX_NAME = 32


class AccountError(RuntimeError):
    """An account or group could not be created."""


@dataclass(frozen=True)
class Account:
    """A hub user's unix account."""

    name: str
    uid: int
    gid: int
    home: str


def unix_name(prefix: str, name: str) -> str:
    """A valid unix user/group name for `name`: lower-case, safe characters, ≤ 32 chars."""
    safe = _UNSAFE.sub("-", name.lower())
    candidate = prefix + safe
    if candidate == prefix + name and len(candidate) <= _MAX_NAME:
        return candidate
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{candidate[: _MAX_NAME - 9]}-{digest}"


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode not in (0, 9):  # 9: the name exists (another process made it)
        raise AccountError(f"{argv[0]} failed: {result.stderr.strip() or result.returncode}")


def share_tree(path: Path, gid: int) -> None:
    """Give the project's group read-write access to everything under `path` (no links)."""
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            _share(os.path.join(root, name), gid)
    _share(str(path), gid, mode=0o2770)


def own_tree(path: Path, uid: int, gid: int) -> None:
    """Make `uid`/`gid` own everything under `path` (a workload's own directory; no links)."""
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
    os.chown(path, uid, gid, follow_symlinks=False)


def _share(path: str, gid: int, mode: int | None = None) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        return
    if st.st_gid != gid:
        os.chown(path, -1, gid, follow_symlinks=False)
    if mode is None:
        mode = st.st_mode & 0o7777 | 0o060
        if stat.S_ISDIR(st.st_mode):
            mode |= 0o2070
        elif st.st_mode & stat.S_IXUSR:
            mode |= 0o010
        mode &= ~0o007
    if st.st_mode & 0o7777 != mode:
        os.chmod(path, mode)


class UnixAccounts(LoggingConfigurable):
    """Creates and finds the accounts and groups of docs/isolation.md."""

    user_prefix = Unicode(
        "wb-",
        help="""Prefix of the unix account of each hub user (`wb-alice` for `alice`).""",
    ).tag(config=True)

    group_prefix = Unicode(
        "wbp-",
        help="""Prefix of the unix group of each project (`wbp-churn` for `churn`).""",
    ).tag(config=True)

    uid_min = Int(
        70000,
        help="""Lowest uid (and gid) of the accounts and groups the workbench creates. Keep the
        range clear of the machine's own users (Debian's regular users: 1000-59999).""",
    ).tag(config=True)

    uid_max = Int(79999, help="Highest uid (and gid) the workbench gives out.").tag(config=True)

    uid_record = Unicode(
        "",
        help="""File holding the highest uid given out so far, so that a deleted user's uid
        (which may still own files in projects) is never given to a new user. Set by
        `workbench up` to `<data_dir>/unix-uids`; empty: no record (uids may be reused).""",
    ).tag(config=True)

    home_dir_template = Unicode(
        "",
        help="""Home directory of a hub user's account; `{username}` is replaced by the hub
        user's name. Set by `workbench up` to `<data_dir>/homes/{username}`.""",
    ).tag(config=True)

    def home(self, user: str) -> str:
        return self.home_dir_template.format(username=user)

    def ensure_user(self, user: str) -> Account:
        """The hub user's account, created (with its home) if missing. Blocking."""
        name = unix_name(self.user_prefix, user)
        home = self.home(user)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            _run(
                [
                    "useradd",
                    "--uid",
                    str(self._next_uid()),
                    "--no-create-home",
                    "--home-dir",
                    home,
                    "--shell",
                    "/usr/sbin/nologin",
                    "--user-group",
                    "--comment",
                    f"Jupyter Workbench user {user}"[:200],
                    "-K",
                    f"GID_MIN={self.uid_min}",
                    "-K",
                    f"GID_MAX={self.uid_max}",
                    name,
                ]
            )
            entry = pwd.getpwnam(name)
            self._record_uid(entry.pw_uid)
            self.log.info("Created unix account %s (uid %s) for %s", name, entry.pw_uid, user)
        path = Path(home)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
        if (st.st_uid, st.st_gid) != (entry.pw_uid, entry.pw_gid):
            own_tree(path, entry.pw_uid, entry.pw_gid)  # new, or used before isolation was on
            path.chmod(0o700)
        return Account(name=name, uid=entry.pw_uid, gid=entry.pw_gid, home=home)

    def ensure_project_group(self, project: str, path: str | Path) -> int:
        """The project's group, created if missing; its directory shared with it. Blocking."""
        name = unix_name(self.group_prefix, project)
        try:
            gid = grp.getgrnam(name).gr_gid
        except KeyError:
            _run(
                [
                    "groupadd",
                    "-K",
                    f"GID_MIN={self.uid_min}",
                    "-K",
                    f"GID_MAX={self.uid_max}",
                    name,
                ]
            )
            gid = grp.getgrnam(name).gr_gid
            self.log.info("Created unix group %s (gid %s) for project %s", name, gid, project)
        path = Path(path)
        st = path.stat()
        if st.st_gid != gid or st.st_mode & 0o7777 != 0o2770:
            share_tree(path, gid)  # first workload of the project (or it was moved back)
        return gid

    def _next_uid(self) -> int:
        """One above every uid in the range ever given out (never a deleted user's)."""
        used = [e.pw_uid for e in pwd.getpwall() if self.uid_min <= e.pw_uid <= self.uid_max]
        if self.uid_record:
            with contextlib.suppress(FileNotFoundError, ValueError):
                used.append(int(Path(self.uid_record).read_text()))
        uid = max([self.uid_min - 1, *used]) + 1
        if uid > self.uid_max:
            raise AccountError(f"no uid left in {self.uid_min}-{self.uid_max} (UnixAccounts)")
        return uid

    def _record_uid(self, uid: int) -> None:
        if self.uid_record:
            with contextlib.suppress(FileNotFoundError, ValueError):
                uid = max(uid, int(Path(self.uid_record).read_text()))
            Path(self.uid_record).write_text(str(uid))

    def remove_user(self, user: str) -> str | None:
        """Delete the hub user's account; keep its home, renamed and owned by root, for an
        admin to restore or delete. Returns where the home went. Blocking."""
        name = unix_name(self.user_prefix, user)
        try:
            pwd.getpwnam(name)
        except KeyError:
            return None
        _run(["userdel", name])
        self.log.info("Deleted unix account %s of %s", name, user)
        home = Path(self.home(user))
        if not home.is_dir() or home.is_symlink():
            return None
        kept = home.with_name(f".deleted-{home.name}-{int(time.time())}")
        home.rename(kept)
        own_tree(kept, 0, 0)
        kept.chmod(0o700)
        return str(kept)

    def remove_project_group(self, project: str) -> None:
        """Delete a deleted project's group. Blocking."""
        name = unix_name(self.group_prefix, project)
        with contextlib.suppress(KeyError):
            grp.getgrnam(name)
            _run(["groupdel", name])
