"""Process facts from Linux ``/proc`` (stdlib only: the supervisor shim imports this too)."""

from __future__ import annotations

import os
from typing import NamedTuple

_DEAD_STATES = frozenset({"Z", "X", "x"})


class ProcStat(NamedTuple):
    """The fields of ``/proc/<pid>/stat`` the runtime uses."""

    pid: int
    state: str
    ppid: int
    starttime: int  # clock ticks after boot: with the pid, identifies one process


def read_stat(pid: int) -> ProcStat | None:
    """Read ``/proc/<pid>/stat``, or ``None`` if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            data = stat_file.read()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may itself contain ") "
    fields = data[data.rindex(b")") + 2 :].split()
    return ProcStat(pid, fields[0].decode(), int(fields[1]), int(fields[19]))


def is_alive(pid: int, starttime: int) -> bool:
    """Whether the process ``pid`` started at ``starttime`` still runs (not reused, no zombie)."""
    stat = read_stat(pid)
    return stat is not None and stat.starttime == starttime and stat.state not in _DEAD_STATES


def descendants(pid: int) -> list[int]:
    """The living descendants of ``pid`` (children first)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None and stat.state not in _DEAD_STATES:
                children.setdefault(stat.ppid, []).append(stat.pid)
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def reap_children() -> None:
    """Collect every child that has exited, so none lingers as a zombie (never blocks)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
