"""`Isolation`: the configurable that builds each local workload's sandbox policy."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from traitlets import Bool, Instance, List, Unicode, default
from traitlets.config import LoggingConfigurable

from workbench_hub.isolation.accounts import Account, UnixAccounts
from workbench_hub.isolation.sandbox import Bind, SandboxPolicy, under


class Isolation(LoggingConfigurable):
    """Builds the sandbox of each local workload (used only when `enabled`)."""

    enabled = Bool(
        False,
        help="""Run every local workload (session, job run, model build, model replica) as its
        user's own unix account inside a sandbox (needs root). `workbench up` turns it on when
        it runs as root; see docs/isolation.md for what a workload then sees.""",
    ).tag(config=True)

    hidden_paths = List(
        Unicode(),
        help="""Directories no workload sees, except the parts its policy binds back (its
        project, its home, its own build or snapshot directory). `workbench up` sets the data
        directory and the projects directory.""",
    ).tag(config=True)

    extra_paths = List(
        Unicode(),
        help="""More directories every workload sees read-only (software outside the Python
        installation, e.g. a shared conda directory). The Python installation the workbench
        runs from (prefixes and `sys.path`) is always included.""",
    ).tag(config=True)

    project_root = Unicode(
        "",
        help="""Directory holding every project's directory; a workload's volume there is its
        project, whose files its project's unix group shares.""",
    ).tag(config=True)

    accounts = Instance(UnixAccounts)

    @default("accounts")
    def _default_accounts(self):
        return UnixAccounts(parent=self)

    def software_paths(self) -> list[str]:
        """Read-only directories every workload needs: Python, its packages, `extra_paths`."""
        candidates = [
            sys.prefix,
            sys.base_prefix,
            sys.exec_prefix,
            os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))),
            *sys.path,
            *self.extra_paths,
        ]
        hidden = [os.path.realpath(p) for p in self.hidden_paths]
        found: list[str] = []
        for path in sorted({os.path.realpath(p) for p in candidates if p}, key=len):
            if not os.path.isdir(path) or path == "/":
                continue
            # never a hidden directory, nor one holding it (that would show it again)
            if any(under(path, h) or under(h, path) for h in hidden):
                continue
            if not any(under(path, kept) for kept in found):
                found.append(path)
        return found

    def policy(
        self,
        account: Account,
        groups: Iterable[int],
        binds: Iterable[Bind],
    ) -> SandboxPolicy:
        """The sandbox of a workload of `account` that may see `binds` (plus home, software)."""
        everything = [
            *binds,
            Bind(account.home),
            *(Bind(path, read_only=True) for path in self.software_paths()),
        ]
        return SandboxPolicy(
            uid=account.uid,
            gid=account.gid,
            groups=tuple(sorted(set(groups))),
            hide=tuple(self.hidden_paths),
            binds=tuple(everything),
        )

    def is_project_dir(self, path: str, project: str) -> bool:
        return bool(self.project_root) and os.path.realpath(path) == os.path.realpath(
            os.path.join(self.project_root, project)
        )
