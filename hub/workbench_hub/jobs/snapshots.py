"""Content-addressed snapshots of project files, so a past run can be rerun on the same code.

A snapshot is a *manifest* (every file's relative path, mode and content hash) plus the file
contents stored once per distinct content under ``objects/``. The code hash of a run is the
SHA-256 of its manifest. Directories ``.workbench``, ``.git`` and ``.ipynb_checkpoints`` are
skipped. Files larger than ``max_file_bytes`` are hashed by path, size and modification time and
not copied: a rerun sees their current version (data files, not code).

Symbolic links never take a snapshot out of the project: a link (to a file or a directory) that
resolves inside the project is kept as a relative link, one that leads outside is left out, and
files are read without following any link (:mod:`workbench_hub.confine`).

Everything here is blocking file I/O: call it in an executor.
"""

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import BinaryIO

from workbench_hub import confine

SKIP_DIRS = frozenset({".workbench", ".git", ".ipynb_checkpoints"})
_CHUNK = 1 << 20


class SnapshotMissing(LookupError):
    """No snapshot with this code hash is stored (it was never taken or has been deleted)."""


def _file_hash(f: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


class SnapshotStore:
    """Snapshots under ``root``: ``objects/<aa>/<hash>`` and ``manifests/<code hash>.json``."""

    def __init__(self, root: str | Path, max_file_bytes: int = 50 * 1024**2) -> None:
        self.root = Path(root)
        self.max_file_bytes = max_file_bytes
        # (path, size, mtime_ns, inode) → content hash: unchanged files are not read again
        self._hashes: dict[tuple[str, int, int, int], str] = {}

    def _object(self, content_hash: str) -> Path:
        return self.root / "objects" / content_hash[:2] / content_hash

    def _manifest(self, code_hash: str) -> Path:
        algorithm, _, hexdigest = code_hash.partition(":")
        if algorithm != "sha256" or len(hexdigest) != 64 or not hexdigest.isalnum():
            raise SnapshotMissing(code_hash)
        return self.root / "manifests" / f"{hexdigest}.json"

    def _store(self, source: BinaryIO, content_hash: str) -> None:
        target = self._object(content_hash)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{content_hash}.{secrets.token_hex(4)}")
        source.seek(0)
        with tmp.open("xb") as copy:
            shutil.copyfileobj(source, copy, _CHUNK)
        with tmp.open("rb") as copy:
            if _file_hash(copy) != content_hash:  # changed while we copied: keep nothing wrong
                tmp.unlink()
                return
        os.replace(tmp, target)

    def _walk(self, project: Path):
        """Every file and link of ``project`` (links to directories are not entered)."""
        for dirpath, dirnames, filenames in os.walk(project):
            links = [d for d in dirnames if Path(dirpath, d).is_symlink()]
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and d not in links)
            for filename in sorted([*filenames, *(d for d in links if d not in SKIP_DIRS)]):
                yield Path(dirpath, filename)

    def snapshot(self, project: str | Path) -> str:
        """Snapshot the files of ``project``; return the code hash (``sha256:<hex>``)."""
        project = Path(project)
        entries = []
        for path in self._walk(project):
            relative = path.relative_to(project).as_posix()
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(info.st_mode):
                try:  # kept only if it stays inside, as a link relative to where it is
                    target = confine.resolve_within(project, relative)
                except confine.PathEscape:
                    continue
                link = os.path.relpath(target, project.resolve().joinpath(relative).parent)
                entries.append({"path": relative, "link": link})
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            mode = stat.S_IMODE(info.st_mode)
            if info.st_size > self.max_file_bytes:
                entries.append(
                    {
                        "path": relative,
                        "mode": mode,
                        "large": f"{info.st_size}:{info.st_mtime_ns}",
                    }
                )
                continue
            key = (str(path), info.st_size, info.st_mtime_ns, info.st_ino)
            content_hash = self._hashes.get(key)
            try:
                with confine.read_beneath(project, relative) as f:
                    if content_hash is None:
                        content_hash = _file_hash(f)
                    self._store(f, content_hash)
            except (FileNotFoundError, confine.PathEscape):  # gone, or a link swapped in
                continue
            self._hashes[key] = content_hash
            entries.append({"path": relative, "mode": mode, "sha256": content_hash})
        manifest = json.dumps({"files": entries}, sort_keys=True, separators=(",", ":"))
        code_hash = "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()
        target = self._manifest(code_hash)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
            tmp.write_text(manifest)
            os.replace(tmp, target)
        return code_hash

    def exists(self, code_hash: str | None) -> bool:
        if not code_hash:
            return False
        try:
            return self._manifest(code_hash).is_file()
        except SnapshotMissing:
            return False

    def files(self, code_hash: str) -> set[str]:
        """The relative paths in a snapshot."""
        return {entry["path"] for entry in self._load(code_hash)}

    def _load(self, code_hash: str) -> list[dict]:
        try:
            return json.loads(self._manifest(code_hash).read_text())["files"]
        except FileNotFoundError:
            raise SnapshotMissing(code_hash) from None

    def materialize(self, code_hash: str, destination: str | Path, project: str | Path) -> None:
        """Write the snapshot's files into ``destination`` (created; must not exist).

        Large files that were not copied are symbolic links to their current version in
        ``project`` (left out if that now leads outside it). The snapshot's links are made
        after its files, and removed again unless they resolve inside ``destination``.
        """
        destination = Path(destination)
        entries = self._load(code_hash)
        destination.mkdir(parents=True, mode=0o700)
        links = []
        for entry in entries:
            relative = Path(entry["path"])
            if relative.is_absolute() or ".." in relative.parts:
                continue
            if "link" in entry:
                links.append((relative, entry["link"]))
                continue
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if "large" in entry:
                with contextlib.suppress(confine.PathEscape):
                    target.symlink_to(confine.resolve_within(project, relative))
            else:
                shutil.copyfile(self._object(entry["sha256"]), target)
                target.chmod(entry["mode"])
        for relative, link in links:
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            (destination / relative).symlink_to(link)
        for relative, _ in links:  # a chain of links can only be judged once all are made
            try:
                confine.resolve_within(destination, relative)
            except confine.PathEscape:
                (destination / relative).unlink()
