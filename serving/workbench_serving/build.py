"""The build step of a model: snapshot, install, check (docs/models.md, "Builds").

Run by the control plane as a ``model-build`` workload::

    python -m workbench_serving.build --project-dir P --output O --file F --function FN

1. copies the project's files into ``O/src/`` (read-only), leaving out what ``.workbenchignore``
   and the default ignores list, within size limits;
2. when ``O/src/requirements.txt`` exists, creates the environment ``O/env`` and installs the
   requirements into it with pip;
3. checks, with the build's Python, that the function can be imported and called with one
   argument (:mod:`workbench_serving.check`).

Its output is the build log: progress lines, pip's output, and on failure a last line
``error: <what went wrong>`` (exit code 1). ``O/build.json`` (the manifest) is written only
when every step succeeded, so a build directory without it is not a build.
"""

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import site
import stat
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pathspec

from workbench_hub import confine

MANIFEST = "build.json"
IGNORE_FILE = ".workbenchignore"
#: always left out: the project's own Git data and workbench data, caches, checkpoints
DEFAULT_IGNORES = ("/.git", "/.workbench/", "__pycache__/", ".ipynb_checkpoints/", "*.pyc")
DEFAULT_MAX_BYTES = 1024**3
DEFAULT_MAX_FILE_BYTES = 100 * 1024**2
DEFAULT_INSTALL_TIMEOUT = 1800
DEFAULT_CHECK_TIMEOUT = 300
ERROR_PREFIX = "error: "
_CHUNK = 1 << 20

_child: subprocess.Popen | None = None  # the step running now, killed on SIGTERM


class BuildError(Exception):
    """The build cannot be made; the message says why (and, when it can, what to do)."""


def say(line: str) -> None:
    """Write one line of the build log."""
    print(line, flush=True)


def human_bytes(size: int) -> str:
    """``512 bytes``, ``2 KiB``, ``1.5 GiB``."""
    if size < 1024:
        return f"{size} bytes"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    text = f"{value:.1f}".removesuffix(".0")
    return f"{text} {unit}"


# ---- snapshot


@dataclass
class Snapshot:
    """What a snapshot holds: regular files (path, bytes, sha256) and symbolic links."""

    files: list[dict] = field(default_factory=list)
    links: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(entry["bytes"] for entry in self.files)


@dataclass
class _Plan:
    files: list[tuple[str, int]] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # (path, target), both relative
    skipped: list[str] = field(default_factory=list)


def ignore_spec(project: Path) -> pathspec.GitIgnoreSpec:
    """The default ignores followed by the lines of the project's ``.workbenchignore``."""
    lines = list(DEFAULT_IGNORES)
    path = project / IGNORE_FILE
    if path.is_file():
        try:
            lines += path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as e:
            raise BuildError(f"cannot read {IGNORE_FILE}: {e.strerror}") from None
    try:
        return pathspec.GitIgnoreSpec.from_lines(lines)
    except Exception as e:  # pathspec raises several types for a bad pattern
        raise BuildError(f"{IGNORE_FILE} has an invalid pattern: {e}") from None


def _link_target(root: Path, path: Path) -> tuple[str | None, str]:
    """(the path relative to root a symbolic link finally points to, or None; why not)."""
    if not path.exists():  # dangling, or a loop
        return None, "it points nowhere"
    try:
        target = confine.resolve_within(root, path.relative_to(root))
    except confine.PathEscape:
        return None, "it points outside the project"
    return target.relative_to(root).as_posix(), ""


def _plan(root: Path, spec: pathspec.GitIgnoreSpec, max_file_bytes: int) -> _Plan:
    """Walk the project: what to copy, or a BuildError for a nested repository or a big file."""
    plan = _Plan()

    def link(rel: str, full: Path) -> None:
        target, why = _link_target(root, full)
        if target is None:
            plan.skipped.append(f"symbolic link {rel}: {why}; left out")
        else:
            plan.links.append((rel, target))

    def walk_error(error: OSError) -> None:
        raise BuildError(f"cannot read {error.filename}: {error.strerror}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=walk_error):
        base = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        kept = []
        for name in sorted(dirnames):
            rel, full = prefix + name, Path(dirpath, name)
            if full.is_symlink():
                if not (spec.match_file(rel) or spec.match_file(rel + "/")):
                    link(rel, full)
                continue
            if spec.match_file(rel + "/"):
                continue
            if name == ".git":
                raise BuildError(
                    f"the project contains a Git repository in {rel}/: list it in"
                    f" {IGNORE_FILE} (a line `/{rel}/`) to leave it out of the build"
                )
            kept.append(name)
            plan.dirs.append(rel)
        dirnames[:] = kept
        for name in sorted(filenames):
            rel, full = prefix + name, Path(dirpath, name)
            if spec.match_file(rel):
                continue
            try:
                info = full.lstat()
            except OSError as e:
                raise BuildError(f"cannot read {rel}: {e.strerror}") from None
            if stat.S_ISLNK(info.st_mode):
                link(rel, full)
            elif not stat.S_ISREG(info.st_mode):
                plan.skipped.append(f"{rel}: not a regular file; left out")
            elif info.st_size > max_file_bytes:
                raise BuildError(
                    f"file {rel} is {human_bytes(info.st_size)}, over the limit of"
                    f" {human_bytes(max_file_bytes)} for one file: list it in {IGNORE_FILE}"
                    " to leave it out of the build"
                )
            else:
                plan.files.append((rel, info.st_size))
    return plan


def _check_total(files: list[tuple[str, int]], max_bytes: int) -> None:
    total = sum(size for _, size in files)
    if total <= max_bytes:
        return
    largest = sorted(files, key=lambda item: -item[1])[:3]
    names = ", ".join(f"{rel} ({human_bytes(size)})" for rel, size in largest)
    raise BuildError(
        f"the build's files total {human_bytes(total)}, over the limit of"
        f" {human_bytes(max_bytes)}; largest: {names}. List what the model does not need in"
        f" {IGNORE_FILE}"
    )


def _read_only(mode: int) -> int:
    return stat.S_IMODE(mode) & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def _copy_file(root: Path, rel: str, target: Path, max_file_bytes: int) -> dict:
    """Copy one regular file (following no link on the way), hash it, make the copy read-only."""
    digest, size = hashlib.sha256(), 0
    try:
        source = confine.read_beneath(root, rel)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise BuildError(f"cannot read {rel}: {e.strerror}") from None
    with source as src, target.open("xb") as dst:
        info = os.fstat(src.fileno())
        while chunk := src.read(_CHUNK):
            size += len(chunk)
            if size > max_file_bytes:
                raise BuildError(
                    f"file {rel} grew over the limit of {human_bytes(max_file_bytes)} for one"
                    f" file while it was copied: list it in {IGNORE_FILE}"
                )
            digest.update(chunk)
            dst.write(chunk)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
    os.chmod(target, _read_only(info.st_mode))
    return {"path": rel, "bytes": size, "sha256": digest.hexdigest()}


def take_snapshot(
    project: Path,
    destination: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Snapshot:
    """Copy the project's files into ``destination`` (which must not exist) and describe them.

    Rules: the default ignores and ``.workbenchignore`` (gitignore syntax) say what is left
    out; a ``.git`` directory left in is an error (a repository inside the project); a file
    over ``max_file_bytes`` or a total over ``max_bytes`` is an error; symbolic links that
    point inside the project are copied as (relative) links when their target is in the
    snapshot too, other links are left out and listed in ``skipped``; sockets, pipes and
    devices are left out. Copied files are read-only.
    """
    root = project.resolve()
    plan = _plan(root, ignore_spec(root), max_file_bytes)
    _check_total(plan.files, max_bytes)
    snapshot = Snapshot(skipped=plan.skipped)
    destination.mkdir(parents=True)
    for rel in plan.dirs:
        (destination / rel).mkdir()
    total = 0
    for rel, _ in plan.files:
        try:
            entry = _copy_file(root, rel, destination / rel, max_file_bytes)
        except FileNotFoundError:
            snapshot.skipped.append(f"{rel}: deleted while the build copied the project")
            continue
        except confine.PathEscape:
            snapshot.skipped.append(
                f"{rel}: a symbolic link appeared on its path while the build copied the"
                " project; left out"
            )
            continue
        total += entry["bytes"]
        if total > max_bytes:
            raise BuildError(
                f"the build's files grew over the limit of {human_bytes(max_bytes)} while they"
                f" were copied: list what the model does not need in {IGNORE_FILE}"
            )
        snapshot.files.append(entry)
    for rel, target in plan.links:
        path = destination / rel
        path.symlink_to(os.path.relpath(destination / target, path.parent))
    for rel, target in plan.links:  # only links whose target made it into the snapshot
        path = destination / rel
        if path.exists():
            snapshot.links.append({"path": rel, "target": target})
        else:
            path.unlink()
            snapshot.skipped.append(
                f"symbolic link {rel}: its target {target} is not in the build; left out"
            )
    snapshot.files.sort(key=lambda entry: entry["path"])
    return snapshot


# ---- running steps


def _stop_child(signum: int, _frame) -> None:
    """SIGTERM (the build is stopped): end the running step too, then exit."""
    if _child is not None and _child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(_child.pid, signal.SIGKILL)
    raise SystemExit(128 + signum)


def run_step(
    argv: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> tuple[int | None, list[str]]:
    """Run ``argv`` (no shell), echoing its output to the log indented; return the exit
    code (``None`` when it ran past ``timeout`` seconds and was killed) and its last lines."""
    global _child
    tail: list[str] = []
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: a timeout kills all it started
    )
    _child = proc
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    try:
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            say("  " + line)
            if line.strip():
                tail.append(line.strip())
                del tail[:-50]
        code = proc.wait()
    finally:
        timer.cancel()
        _child = None
        proc.stdout.close()
    with contextlib.suppress(ProcessLookupError):  # what it left behind in its group
        os.killpg(proc.pid, signal.SIGKILL)
    return (None if expired.is_set() else code), tail


def _env_site_packages(env_dir: Path) -> Path:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [env_dir / "lib" / version / "site-packages"]
    candidates += sorted(env_dir.glob("lib/python*/site-packages"))
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise BuildError(f"the new environment {env_dir} has no site-packages directory")


def install(src: Path, env_dir: Path, *, timeout: float, pip_args: list[str]) -> Path:
    """Create ``env_dir`` and install ``src/requirements.txt`` into it; its Python's path."""
    say("install: creating the environment env/ (it sees the packages installed with the server)")
    started = time.monotonic()
    code, tail = run_step(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(env_dir)],
        cwd=src,
        timeout=timeout,
    )
    if code is None:
        raise BuildError(f"install step timed out after {timeout:g} s")
    if code != 0:
        last = f": {tail[-1]}" if tail else ""
        raise BuildError(f"creating the environment failed (exit {code}){last}")
    python = env_dir / "bin" / "python"
    if sys.prefix != sys.base_prefix:
        # the server runs in a virtual environment: --system-site-packages only reaches the
        # base interpreter's packages, so also add this environment's (the model server's)
        lines = [
            f"import site; site.addsitedir({directory!r})" for directory in site.getsitepackages()
        ]
        (_env_site_packages(env_dir) / "_workbench_server.pth").write_text("\n".join(lines) + "\n")
    argv = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "--no-input",
        "--disable-pip-version-check",
        "-r",
        "requirements.txt",
        *pip_args,
    ]
    say(" ".join(["install: pip install -r requirements.txt", *pip_args]))
    env = dict(os.environ, PIP_NO_INPUT="1", PYTHONUNBUFFERED="1")
    left = max(timeout - (time.monotonic() - started), 1.0)  # one budget for both
    code, tail = run_step(argv, cwd=src, timeout=left, env=env)
    if code is None:
        raise BuildError(f"install step timed out after {timeout:g} s")
    if code != 0:
        errors = [line for line in tail if line.startswith("ERROR:")]
        last = errors[-1] if errors else (tail[-1] if tail else "")
        raise BuildError(f"install step failed (exit {code})" + (f": {last}" if last else ""))
    say(f"install: done in {time.monotonic() - started:.1f} s")
    return python


def check(python: Path | str, src: Path, file: str, function: str, *, timeout: float) -> None:
    """Import ``function`` from ``file`` with the build's Python, in the snapshot."""
    say(f"check: importing {function} from {file} with {python}")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    argv = [str(python), "-m", "workbench_serving.check", "--file", file, "--function", function]
    code, tail = run_step(argv, cwd=src, timeout=timeout, env=env)
    if code is None:
        raise BuildError(
            f"the check timed out after {timeout:g} s: importing {file} takes too long"
        )
    if code != 0:
        errors = [line for line in tail if line.startswith(ERROR_PREFIX)]
        if errors:
            raise BuildError(errors[-1].removeprefix(ERROR_PREFIX))
        last = f": {tail[-1]}" if tail else ""
        raise BuildError(f"the check failed (exit {code}){last}")


# ---- the build


def remove_tree(path: Path) -> None:
    """Delete a directory tree even where a directory was made read-only."""

    def retry(func, name, _exc_info) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(name), 0o700)
        if func is not os.rmdir:
            with contextlib.suppress(OSError):
                os.chmod(name, 0o700, follow_symlinks=False)
        func(name)

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=retry)


def _clear(output: Path) -> None:
    """Empty ``output`` (an unfinished build from an earlier attempt)."""
    for child in output.iterdir():
        remove_tree(child)


def _write_manifest(output: Path, manifest: dict) -> None:
    tmp = output / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    os.chmod(tmp, 0o444)
    tmp.rename(output / MANIFEST)


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Options:
    project_dir: Path
    output: Path
    file: str
    function: str
    max_bytes: int = DEFAULT_MAX_BYTES
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    install_timeout: float = DEFAULT_INSTALL_TIMEOUT
    check_timeout: float = DEFAULT_CHECK_TIMEOUT
    pip_args: list[str] = field(default_factory=list)


def build(options: Options) -> dict:
    """Make the build in ``options.output``; return its manifest or raise BuildError.

    On any failure what was made so far (``src/``, ``env/``) is deleted again.
    """
    started, clock = _now(), time.monotonic()
    project, output = options.project_dir.resolve(), options.output.absolute()
    say(f"build: {options.function} in {options.file}, from {project}")
    file = Path(options.file)
    if file.is_absolute() or ".." in file.parts:
        raise BuildError(f"file {options.file!r} must be a path inside the project")
    if not project.is_dir():
        raise BuildError(f"the project directory {project} does not exist")
    if (output / MANIFEST).exists():
        raise BuildError(f"{output} already holds a finished build")
    if output.is_dir() and any(output.iterdir()):
        say(f"build: removing an unfinished earlier attempt in {output}")
        _clear(output)
    output.mkdir(parents=True, exist_ok=True)
    try:
        manifest = _make(options, project, output)
    except BaseException:
        with contextlib.suppress(OSError):
            for part in ("src", "env", MANIFEST + ".tmp"):
                remove_tree(output / part)
        raise
    manifest["started"] = started
    manifest["finished"] = _now()
    _write_manifest(output, manifest)
    say(f"build: succeeded in {time.monotonic() - clock:.1f} s")
    return manifest


def _make(options: Options, project: Path, output: Path) -> dict:
    src = output / "src"
    say(f"snapshot: copying the project's files into {src}")
    snapshot = take_snapshot(
        project, src, max_bytes=options.max_bytes, max_file_bytes=options.max_file_bytes
    )
    for note in snapshot.skipped:
        say(f"snapshot: {note}")
    say(
        f"snapshot: {len(snapshot.files)} files, {human_bytes(snapshot.bytes)}"
        + (f", {len(snapshot.links)} symbolic link(s)" if snapshot.links else "")
    )
    if not (src / options.file).is_file():
        if (project / options.file).is_file():
            raise BuildError(
                f"file {options.file!r} is left out of the build by {IGNORE_FILE} or the"
                " default ignores"
            )
        raise BuildError(f"file {options.file!r} does not exist in the project")

    python: Path | str = sys.executable
    environment = (src / "requirements.txt").is_file()
    if environment:
        python = install(
            src, output / "env", timeout=options.install_timeout, pip_args=options.pip_args
        )
    else:
        say("install: no requirements.txt, nothing to install")
    check(python, src, options.file, options.function, timeout=options.check_timeout)
    return {
        "format": 1,
        "file": options.file,
        "function": options.function,
        "project_dir": str(project),
        "python": str(python),
        "python_version": ".".join(map(str, sys.version_info[:3])),
        "environment": environment,
        "bytes": snapshot.bytes,
        "files": snapshot.files,
        "links": snapshot.links,
        "skipped": snapshot.skipped,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m workbench_serving.build",
        description="Snapshot a project, install its requirements, check the model function.",
    )
    parser.add_argument("--project-dir", required=True, type=Path, help="the project's files")
    parser.add_argument("--output", required=True, type=Path, help="the build's directory")
    parser.add_argument("--file", required=True, help="the model's file, relative")
    parser.add_argument("--function", required=True, help="the model's function in that file")
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES)
    parser.add_argument("--max-file-bytes", type=int, default=DEFAULT_MAX_FILE_BYTES)
    parser.add_argument("--install-timeout", type=float, default=DEFAULT_INSTALL_TIMEOUT)
    parser.add_argument("--check-timeout", type=float, default=DEFAULT_CHECK_TIMEOUT)
    parser.add_argument(
        "--pip-arg",
        action="append",
        default=[],
        dest="pip_args",
        help="an extra argument of pip install (repeat; write --pip-arg=--no-index)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = Options(**vars(args))
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_child)
    try:
        build(options)
    except Exception as e:
        if isinstance(e, BuildError):
            message = str(e)
        elif isinstance(e, OSError):
            message = f"could not write the build: {e}"
        else:
            traceback.print_exc(file=sys.stdout)
            message = f"internal error: {type(e).__name__}: {e}"
        say(ERROR_PREFIX + message)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
