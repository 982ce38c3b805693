"""Per-container logs of executed pods: what ``GET .../pods/<name>/log`` serves."""

from __future__ import annotations

import asyncio
import contextlib

from tests.kubeapi.store import timestamp


class LogBuffer:
    """The output of one container (all its restarts), line by line with timestamps."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, bytes]] = []
        self.closed = False
        self._changed = asyncio.Event()

    def append(self, line: bytes) -> None:
        self.lines.append((timestamp(), line if line.endswith(b"\n") else line + b"\n"))
        self._wake()

    def close(self) -> None:
        """The container stopped for good: followers get the end of the stream."""
        self.closed = True
        self._wake()

    def reopen(self) -> None:
        self.closed = False

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        """Until a line is appended or the buffer closes, at most ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def render(self, start: int, timestamps: bool) -> bytes:
        chunk = self.lines[start:]
        if timestamps:
            return b"".join(ts.encode() + b" " + line for ts, line in chunk)
        return b"".join(line for _, line in chunk)


class Logs:
    """Log buffers by (pod uid, container name)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, str], LogBuffer] = {}

    def buffer(self, pod_uid: str, container: str) -> LogBuffer:
        key = (pod_uid, container)
        if key not in self._buffers:
            self._buffers[key] = LogBuffer()
        return self._buffers[key]

    def find(self, pod_uid: str, container: str) -> LogBuffer | None:
        return self._buffers.get((pod_uid, container))

    def forget(self, pod_uid: str) -> None:
        for key in [k for k in self._buffers if k[0] == pod_uid]:
            self._buffers.pop(key).close()
