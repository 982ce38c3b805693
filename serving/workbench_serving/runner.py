"""Calling the model's function: one prediction context per call, answers encoded as JSON.

A synchronous function runs in worker threads (one by default) so that the event loop keeps
reading requests, and can answer 429, while it computes; once it has proved fast it is called on
the loop's thread, which is cheaper (`SyncRunner` says when and why). Calls finished in a worker
are handed back to the loop through a deque; the loop is woken once for however many finished
meanwhile. An `async def` function is awaited on the loop.

Each call gets a `PredictionContext` (a new uuid4 and an empty metrics dict) in
`workbench.metrics.prediction_context`, set in the thread (or task) that runs it. When the
function went through the `model_metrics` decorator, `[uuid, start_ms, end_ms, metrics]` is
appended to the reporter's buffer.
"""

import asyncio
import collections
import logging
import queue
import random
import threading
import time
from collections.abc import Callable

import orjson

from workbench.metrics import PredictionContext, prediction_context

log = logging.getLogger("workbench_serving.model")

_NUMPY = orjson.OPT_SERIALIZE_NUMPY

#: kinds of answer: `/model` (Cloudera) and `/invocations` (MLflow)
MODEL, INVOCATIONS = "model", "invocations"


# uuid.uuid4() reads os.urandom, a system call that releases the GIL: in the worker thread that
# hands the GIL to the event loop on every call (two context switches a request, measured).
# Prediction uuids need uniqueness, not secrecy: a generator seeded once from os.urandom.
_random = random.Random()  # noqa: S311 - not a secret
_V4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_V4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_uuid() -> str:
    """A random (version 4) UUID string, without a system call."""
    h = "%032x" % (_random.getrandbits(128) & _V4_CLEAR | _V4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def error_body(message: str) -> bytes:
    return orjson.dumps({"success": False, "error": message})


def _default(value):
    """JSON for what orjson does not know: pandas objects, sets, numpy views, Decimal."""
    if hasattr(value, "tolist"):  # numpy arrays orjson refused (non-contiguous), pandas Series
        return value.tolist()
    if hasattr(value, "to_dict"):  # pandas DataFrame
        return value.to_dict(orient="records")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if type(value).__name__ == "Decimal":
        return float(value)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def encode(kind: str, result, prediction_uuid: str) -> bytes:
    """The answer body for `result`; TypeError if it cannot be JSON."""
    if kind == MODEL:
        data = {"success": True, "response": result, "uuid": prediction_uuid}
    else:
        data = {"predictions": result}
    try:
        return orjson.dumps(data, default=_default, option=_NUMPY)
    except TypeError as exc:
        if "Dict key must be" not in str(exc):
            raise
        return orjson.dumps(data, default=_default, option=_NUMPY | orjson.OPT_NON_STR_KEYS)


class Caller:
    """Runs one call of the function and turns its outcome into `(status, body, error)`."""

    def __init__(self, func: Callable, name: str, records: collections.deque) -> None:
        self.func = func
        self.name = name
        self.records = records

    def _failed(self, call: PredictionContext, exc: BaseException) -> tuple[int, bytes, bool]:
        log.error(
            "function %r raised %s (prediction %s)",
            self.name,
            type(exc).__name__,
            call.uuid,
            exc_info=exc,
        )
        return 500, error_body(f"{type(exc).__name__}: {exc}"), True

    def _finish(self, call, kind, result, start_ns) -> tuple[int, bytes, bool]:
        end_ns = max(time.time_ns(), start_ns)  # the wall clock may be stepped back
        try:
            body = encode(kind, result, call.uuid)
        except (TypeError, ValueError) as exc:
            log.error("the result of %r is not JSON: %s", self.name, exc)
            message = f"the model's result cannot be encoded as JSON: {type(exc).__name__}: {exc}"
            return 500, error_body(message), True
        if call.tracked:
            self.records.append(
                [call.uuid, start_ns // 1_000_000, end_ns // 1_000_000, call.metrics]
            )
        return 200, body, False

    def call_sync(self, request, kind: str) -> tuple[int, bytes, bool]:
        call = PredictionContext(new_uuid())
        token = prediction_context.set(call)
        start_ns = time.time_ns()
        try:
            result = self.func(request)
        except BaseException as exc:  # a worker thread must survive even SystemExit
            return self._failed(call, exc)
        finally:
            prediction_context.reset(token)
        return self._finish(call, kind, result, start_ns)

    async def call_async(self, request, kind: str) -> tuple[int, bytes, bool]:
        call = PredictionContext(new_uuid())
        token = prediction_context.set(call)
        start_ns = time.time_ns()
        try:
            result = await self.func(request)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            return self._failed(call, exc)
        finally:
            prediction_context.reset(token)
        return self._finish(call, kind, result, start_ns)


class SyncRunner:
    """Calls a synchronous function in worker threads, or on the loop when that is cheaper.

    The worker thread keeps the event loop free while the function computes: the loop goes on
    reading requests, answers health checks and refuses with 429 once `--queue-limit` calls
    wait or run. The price is the hand-over: each time the function releases the GIL (numpy
    does in every BLAS call), the loop thread, woken by the network, takes it. Measured on a
    scikit-learn pipeline at 16 connections: ~3.5 context switches and ~90 us of CPU more per
    request than calling the function on the loop (-15 % requests/s).

    So, with one worker thread, a function that has proved fast is called on the loop thread
    itself, never while a call is in the worker (calls never overlap, whichever thread runs
    them). "Proved fast": `WARMUP_CALLS` calls made, calls over `FAST_SECONDS` rare (a score
    that each slow call raises by 1 and every call decays by `DECAY` stays under
    `SLOW_SCORE`), and this request's body at most twice the largest one that was fast (plus
    1 KiB), so a caller's unusually large batch goes to the worker. Bounds on the loop's time:
    a call on the loop first yields once, so the requests read with it are all admitted (or
    refused with 429) before any runs; and calls run on the loop for `PASS_BUDGET_SECONDS` at
    most before the loop looks at the network again. A function that is slow, or turns slow,
    runs in the worker: only a call that is much slower than the ones before it, with a body
    of a usual size, holds the loop while it runs.
    """

    FAST_SECONDS = 0.005
    WARMUP_CALLS = 50
    DECAY = 0.95
    SLOW_SCORE = 0.5
    PASS_BUDGET_SECONDS = 0.010
    BODY_SLACK = 1024

    def __init__(self, caller: Caller, threads: int = 1, inline: bool = True) -> None:
        self._caller = caller
        self._threads = max(1, threads)
        self.inline = inline and self._threads == 1  # several threads: concurrency is wanted
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._done: collections.deque = collections.deque()
        self._wake_pending = False
        self._outstanding = 0  # calls handed to the workers and not answered yet
        self._calls = 0
        self._slow_score = 0.0  # decaying count of calls over FAST_SECONDS
        self._fast_body = 0  # the largest request body of a fast call
        self._spent = 0.0  # seconds spent calling on the loop in this pass
        self._idle = asyncio.Event()  # set while no call is in a worker
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for i in range(self._threads):
            name = f"model-worker-{i}"
            threading.Thread(target=self._work, name=name, daemon=True).start()

    def stop(self) -> None:
        for _ in range(self._threads):
            self._jobs.put(None)

    def _fast(self) -> bool:
        return self._calls >= self.WARMUP_CALLS and self._slow_score < self.SLOW_SCORE

    async def call(self, request, kind: str, size: int) -> tuple[int, bytes, bool]:
        """Call the function on `request` (its body had `size` bytes); `(status, body, error)`."""
        if self.inline and self._fast() and size <= 2 * self._fast_body + self.BODY_SLACK:
            await asyncio.sleep(0)  # the requests read with this one are admitted first
            while self._fast():
                if self._outstanding:
                    await self._idle.wait()  # calls already in the worker go first
                elif self._spent >= self.PASS_BUDGET_SECONDS:
                    await asyncio.sleep(0)  # the loop looks at the network, then this call
                else:
                    return self._call_here(request, kind, size)
        return await self._call_in_worker(request, kind, size)

    def _call_here(self, request, kind: str, size: int) -> tuple[int, bytes, bool]:
        if not self._spent:
            self._loop.call_soon(self._next_pass)
        started = time.perf_counter()
        outcome = self._caller.call_sync(request, kind)
        seconds = time.perf_counter() - started
        self._spent += seconds
        self._timed(seconds, size)
        return outcome

    async def _call_in_worker(self, request, kind: str, size: int) -> tuple[int, bytes, bool]:
        future = self._loop.create_future()
        self._outstanding += 1
        self._idle.clear()
        try:
            self._jobs.put((future, request, kind))
            status, body, error, seconds = await future
        finally:
            self._outstanding -= 1
            if not self._outstanding:
                self._idle.set()
        self._timed(seconds, size)
        return status, body, error

    def _timed(self, seconds: float, size: int) -> None:
        self._calls += 1
        slow = seconds >= self.FAST_SECONDS
        self._slow_score = self._slow_score * self.DECAY + slow
        if not slow and size > self._fast_body:
            self._fast_body = size

    def _next_pass(self) -> None:
        self._spent = 0.0

    def _work(self) -> None:
        jobs, done, call = self._jobs, self._done, self._caller.call_sync
        perf_counter = time.perf_counter
        while (job := jobs.get()) is not None:
            future, request, kind = job
            started = perf_counter()
            outcome = call(request, kind)
            done.append((future, (*outcome, perf_counter() - started)))
            if not self._wake_pending:
                self._wake_pending = True
                self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        # Cleared before taking: a call finishing after this line wakes the loop again.
        self._wake_pending = False
        done = self._done
        while done:
            future, outcome = done.popleft()
            if not future.done():
                future.set_result(outcome)
