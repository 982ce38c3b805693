"""A pre-warmed process server ("zygote") that forks sessions with JupyterLab already imported.

Starting ``python -m workbench_lab.singleuser`` spends about 2.3 s importing jupyterhub,
jupyter_server and jupyterlab before the server initialises. The prewarm server is one
long-lived process per hub (and event loop) that has done those imports, and has started no
event loop and no thread. For each session it forks a child that becomes what a fresh
``python -m <module> <args>`` would have been: new session (``setsid``), the session's
environment (replacing the server's), the home directory as working directory, the profile's
limits, then the module run as ``__main__``.

Protocol, over a ``socketpair`` inherited by the server (nothing on the filesystem): frames of a
4-byte big-endian length and a JSON object.

- server → hub, once: ``{"ready": true, "pid": N}`` or ``{"error": "..."}``;
- hub → server, per session: ``{"module", "args", "env", "cwd", "memory", "cpus", "sandbox"}``
  (``memory`` and ``cpus`` are ``null`` without limits, ``sandbox`` without isolation: else the
  child enters that sandbox, as the session's unix account, before it becomes the session);
- server → hub: ``{"pid": N}`` or ``{"error": "..."}``.

The server forks *before* reading a request: the child reads it from the socket, so the
session's environment (tokens) never enters the long-lived server's memory, and later sessions
cannot find it there. The server reaps its children at once (SIGCHLD), so ``os.kill(pid, 0)``
tells the spawner the truth. It exits when the hub closes the socket or dies
(``PR_SET_PDEATHSIG``); it is the hub's child, so ``workbench up`` cleans it up with the rest.
"""

import asyncio
import contextlib
import ctypes
import json
import os
import random
import runpy
import selectors
import signal
import site
import socket
import struct
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Iterable, Mapping

from workbench_hub.isolation.sandbox import SandboxPolicy, enter
from workbench_hub.runtime.procfs import reap_children

from . import limits

#: What a session imports before it serves, imported once by the prewarm server (one that is
#: not installed is skipped: the session does without it, as a normally started one would).
PRELOAD = (
    "jupyterhub.singleuser",
    "jupyterhub.singleuser.extension",
    "jupyter_server.serverapp",
    "jupyterlab.labapp",
    "jupyter_server_terminals",
    "jupyter_lsp",
    "notebook_shim.nbserver",
    "IPython",  # 0.3 s: notebook_shim imports IPython.paths when it links
    "workbench_lab",
)

#: Environment read when a Python process starts or imports `PRELOAD`: the prewarm server is
#: started with the session's values of these, and only serves sessions whose values match.
IMPORT_ENV_NAMES = frozenset(
    {
        "PATH",
        "LANG",
        "LANGUAGE",
        "TZ",
        "LD_LIBRARY_PATH",
        "LD_PRELOAD",
        "VIRTUAL_ENV",
        "CONDA_DEFAULT_ENV",
        "CONDA_PREFIX",
        "CONDA_ROOT",
    }
)
IMPORT_ENV_PREFIXES = (
    "PYTHON",
    "LC_",
    "MALLOC_",
    "GLIBC_TUNABLES",
    "JUPYTERHUB_SINGLEUSER_",
    "JUPYTERHUB_XSRF_",
)

#: How the hub starts the server: without ``workbench_spawner/__init__.py``, which would import
#: the spawner and JupyterHub's hub side (ORM, hub metrics) into every session; and with nothing
#: imported from the hub's working directory.
_BOOTSTRAP = """\
# jupyter-workbench prewarm server: sessions are forked from it
import importlib.util, sys
if sys.path and sys.path[0] == "":
    del sys.path[0]
spec = importlib.util.find_spec("workbench_spawner")
sys.modules["workbench_spawner"] = importlib.util.module_from_spec(spec)
from workbench_spawner.prewarm import main
raise SystemExit(main())
"""

_FRAME = struct.Struct(">I")
_MAX_FRAME = 16 * 2**20
_PR_SET_PDEATHSIG = 1


class PrewarmError(Exception):
    """The prewarm server could not start, or could not start a session."""


def import_env(env: Mapping[str, str]) -> dict[str, str]:
    """The part of `env` that a Python process reads at start-up or import time."""
    return {
        name: value
        for name, value in env.items()
        if name in IMPORT_ENV_NAMES or name.startswith(IMPORT_ENV_PREFIXES)
    }


def _frame(message: dict) -> bytes:
    data = json.dumps(message).encode()
    return _FRAME.pack(len(data)) + data


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise EOFError("the hub closed the prewarm socket")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _recv_frame(sock: socket.socket) -> dict:
    (size,) = _FRAME.unpack(_recv_exact(sock, _FRAME.size))
    if size > _MAX_FRAME:
        raise ValueError(f"prewarm frame of {size} bytes")
    return json.loads(_recv_exact(sock, size))


# --- the server (runs in its own process) --------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when the hub dies, even if it cannot close the socket (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the hub died before prctl
        sys.exit(0)


def _fork_hazards() -> list[str]:
    """What the imports started that a forked child would inherit broken."""
    import threading

    hazards = []
    if threading.active_count() != 1:
        hazards.append(f"{threading.active_count()} threads")
    if "asyncio" in sys.modules:
        policy = asyncio.events._event_loop_policy  # no public way to ask
        local = getattr(policy, "_local", None)
        if asyncio.events._get_running_loop() is not None or getattr(local, "_loop", None):
            hazards.append("an asyncio event loop")
    return hazards


def serve(sock: socket.socket) -> tuple[socket.socket, int] | None:
    """Fork a child per request until the hub goes away.

    Returns ``None`` in the server when the hub closes the socket. Returns in each forked child:
    the control socket, positioned at that child's request, and the pipe on which the child
    reports how its start went (``R`` once it has read the request, then any error).
    """
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj == wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                continue
            if not sock.recv(1, socket.MSG_PEEK):
                return None  # the hub closed the socket
            status_r, status_w = os.pipe()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                selector.close()
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for fd in (wake_r, wake_w, status_r):
                    os.close(fd)
                return sock, status_w
            os.close(status_w)
            with os.fdopen(status_r, "rb") as status:
                report = status.read()
            if not report.startswith(b"R"):
                # the child died before reading all of its request: the stream is lost
                sock.sendall(_frame({"error": "the session process died at start"}))
                return None
            error = report[1:].decode(errors="replace")
            sock.sendall(_frame({"error": error} if error else {"pid": pid}))
        reap_children()


def _prepare_home(home: str) -> None:
    """What SimpleLocalProcessSpawner's ``preexec_fn`` does: create and enter the home."""
    try:
        os.makedirs(home, 0o755, exist_ok=True)
        os.chdir(home)
    except OSError as e:
        print(f"[prewarm] Error preparing {home}: {e}", file=sys.stderr, flush=True)


def _become_session(request: dict) -> None:
    """Turn this forked child into what Popen with the spawner's arguments would have made."""
    os.setsid()
    os.environ.clear()
    os.environ.update(request["env"])
    home = request["cwd"]

    def prepare() -> None:
        if request.get("sandbox"):
            enter(SandboxPolicy.from_dict(request["sandbox"]))
        _prepare_home(home)

    if request.get("memory") is not None:
        limits.make_limits_preexec(int(request["memory"]), set(request["cpus"]), prepare)()
    else:
        prepare()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    random.seed()
    tempfile.tempdir = None  # TMPDIR is read again from the session's environment
    # `python -m` puts the working directory first on sys.path, and the user's site-packages
    # (from HOME) after the standard ones
    if site.ENABLE_USER_SITE and site.USER_SITE in sys.path:
        sys.path.remove(site.USER_SITE)
    site.USER_BASE = site.USER_SITE = None
    sys.path.insert(0, os.getcwd())
    if site.ENABLE_USER_SITE:
        site.addusersitepackages(set(sys.path))
    sys.argv = ["-m", *request["args"]]


def run_child(sock: socket.socket, status: int) -> None:
    """In a forked child: read the request, become the session, run its module as __main__."""
    try:
        request = _recv_frame(sock)
    except Exception:
        os._exit(1)  # the server reports the lost stream
    finally:
        sock.close()
    os.write(status, b"R")
    try:
        _become_session(request)
    except Exception as e:
        os.write(status, f"{type(e).__name__}: {e}".encode())
        os._exit(1)
    os.close(status)
    for name in [request["module"], *(m for m in sys.modules if m.startswith("workbench_spawner"))]:
        sys.modules.pop(name, None)  # run afresh as __main__, as `python -m` does; no trace of us
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)


def main(argv: list[str] | None = None) -> int:
    """The server process: ``python -c _BOOTSTRAP FD PARENT_PID [MODULE…]``."""
    args = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(args[0]))
    _die_with_parent(int(args[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the hub decides when this server ends
    sys.modules.setdefault("rfc3987_syntax", None)  # as workbench_lab.singleuser does
    try:
        for module in args[2:] or PRELOAD:
            with contextlib.suppress(ModuleNotFoundError):
                __import__(module)
    except BaseException as e:
        sock.sendall(_frame({"error": f"cannot import {module}: {type(e).__name__}: {e}"}))
        return 1
    hazards = _fork_hazards()
    if hazards:
        sock.sendall(_frame({"error": "importing left " + " and ".join(hazards)}))
        return 1
    sock.sendall(_frame({"ready": True, "pid": os.getpid()}))
    child = serve(sock)
    if child is None:
        return 0
    run_child(*child)
    return 0


# --- the client (in the hub) ---------------------------------------------------------------


class PrewarmServer:
    """The hub's handle on one prewarm server process; requests are served one at a time."""

    def __init__(
        self,
        env: Mapping[str, str],
        preload: Iterable[str] | None = None,
        start_timeout: float = 60,
        spawn_timeout: float = 10,
    ):
        self.env = dict(env)
        self.preload = list(PRELOAD if preload is None else preload)
        self.start_timeout = start_timeout
        self.spawn_timeout = spawn_timeout
        self.proc: subprocess.Popen | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ready: asyncio.Future | None = None
        self._lock = asyncio.Lock()
        self.broken = False
        self.broken_at = 0.0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _launch(self) -> socket.socket:
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _BOOTSTRAP,
                    str(theirs.fileno()),
                    str(os.getpid()),
                    *self.preload,
                ],
                env=self.env,
                stdin=subprocess.DEVNULL,
                pass_fds=[theirs.fileno()],
                start_new_session=True,  # no ^C from the hub's terminal
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours

    async def start(self) -> None:
        """Start the server (once) and wait until it has imported everything."""
        if self._ready is None:
            self._ready = asyncio.ensure_future(self._start())
        try:
            await asyncio.shield(self._ready)
        except Exception as e:
            raise PrewarmError(str(e)) from None

    async def _start(self) -> None:
        try:
            sock = self._launch()
            self._reader, self._writer = await asyncio.open_unix_connection(sock=sock)
            hello = await asyncio.wait_for(self._read(), self.start_timeout)
        except (OSError, EOFError, ValueError, TimeoutError) as e:
            await self.close()
            raise PrewarmError(f"the prewarm server did not start ({type(e).__name__})") from e
        if not hello.get("ready"):
            await self.close()
            raise PrewarmError(f"the prewarm server failed: {hello.get('error')}")

    async def _read(self) -> dict:
        try:
            (size,) = _FRAME.unpack(await self._reader.readexactly(_FRAME.size))
            if size > _MAX_FRAME:
                raise ValueError(f"prewarm frame of {size} bytes")
            return json.loads(await self._reader.readexactly(size))
        except asyncio.IncompleteReadError:
            raise EOFError("the prewarm server closed its socket") from None

    async def spawn(
        self,
        module: str,
        args: list[str],
        env: Mapping[str, str],
        cwd: str,
        memory: int | None = None,
        cpus: Iterable[int] | None = None,
        sandbox: dict | None = None,
    ) -> int:
        """Fork a session running ``python -m module *args``; return its pid."""
        await self.start()
        if self.broken:
            raise PrewarmError("the prewarm server has stopped")
        request = {
            "module": module,
            "args": list(args),
            "env": dict(env),
            "cwd": cwd,
            "memory": memory,
            "cpus": sorted(cpus) if cpus is not None else None,
            "sandbox": sandbox,
        }
        # A request, once sent, is seen through even if the caller is cancelled (the hub's
        # start timeout): its reply must not be read as the next request's, and a session that
        # nobody will own is ended.
        exchange = asyncio.ensure_future(self._exchange(request))
        try:
            reply = await asyncio.shield(exchange)
        except asyncio.CancelledError:
            exchange.add_done_callback(_kill_unowned)
            raise
        if "pid" not in reply:
            raise PrewarmError(f"the session could not start: {reply.get('error')}")
        return int(reply["pid"])

    async def _exchange(self, request: dict) -> dict:
        async with self._lock:
            try:
                self._writer.write(_frame(request))
                await self._writer.drain()
                return await asyncio.wait_for(self._read(), self.spawn_timeout)
            except (OSError, EOFError, ValueError, TimeoutError) as e:
                await self.close()
                raise PrewarmError(f"the prewarm server stopped answering ({e!r})") from None

    async def close(self) -> None:
        """Close the socket (the server exits on EOF), then collect the process."""
        if not self.broken:
            self.broken = True
            self.broken_at = asyncio.get_running_loop().time()
        if self._writer is not None:
            self._writer.close()
        if self.proc is None:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 5)
        except TimeoutError:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)


def _kill_unowned(exchange: asyncio.Future) -> None:
    if not exchange.cancelled() and exchange.exception() is None and "pid" in exchange.result():
        with contextlib.suppress(ProcessLookupError):
            os.kill(exchange.result()["pid"], signal.SIGKILL)


#: Seconds after a prewarm server failed before the next session starts a new one.
RETRY_AFTER = 300

#: One prewarm server per event loop (the hub has one), created on first use.
_servers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PrewarmServer]" = (
    weakref.WeakKeyDictionary()
)


def shared_server(session_env: Mapping[str, str]) -> PrewarmServer:
    """This loop's prewarm server, started (on first use) with `session_env`'s start-up variables.

    Raises `PrewarmError` when the session must be started normally: the server runs with other
    start-up variables (a session must start as its own environment says), or it failed less
    than `RETRY_AFTER` seconds ago (after that, a new one is started).
    """
    loop = asyncio.get_running_loop()
    env = import_env(session_env)
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    server = _servers.get(loop)
    if server is not None and server.broken:
        if loop.time() - server.broken_at < RETRY_AFTER:
            raise PrewarmError(
                f"the prewarm server stopped {loop.time() - server.broken_at:.0f} s ago "
                f"(a new one is started {RETRY_AFTER} s after)"
            )
        server = None
    if server is None:
        server = _servers[loop] = PrewarmServer(env)
    elif import_env(server.env) != import_env(env):
        raise PrewarmError(
            "the session's start-up environment (PATH, PYTHON*, LC_*, …) is not the prewarm "
            "server's"
        )
    return server


async def close_shared_server() -> None:
    """Stop this loop's prewarm server, if any (sessions it started keep running)."""
    server = _servers.pop(asyncio.get_running_loop(), None)
    if server is not None:
        await server.close()
