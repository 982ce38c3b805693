"""Sends prediction metrics and the replica's stats to the control plane.

Records `[uuid, start_ms, end_ms, metrics]` of decorated calls are appended to `records` (a
deque: the worker threads append, the event loop takes) and posted every 0.5 s, or as soon as
5,000 are waiting, at most 50,000 per request. A failed post puts its records back (up to
`MAX_BUFFERED`; beyond that the oldest are dropped, counted and logged) and they go with the
next post. Stats are posted every 2 s.
"""

import asyncio
import collections
import contextlib
import logging
import time

import httpx
import orjson

from .keys import ControlPlaneError, describe
from .stats import Stats

log = logging.getLogger("workbench_serving.reporter")

FLUSH_SECONDS = 0.5
FLUSH_RECORDS = 5_000
MAX_PER_POST = 50_000
MAX_BUFFERED = 1_000_000
STATS_SECONDS = 2.0
JSON = {"Content-Type": "application/json"}
#: answers that refuse the records themselves: sending them again would not help
REFUSED = (400, 413, 422)


class Reporter:
    """The buffer of prediction records and the two background tasks that post."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        deployment_url: str,
        replica: str,
        stats: Stats,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self._http = http
        self._predictions_url = deployment_url + "/predictions"
        self._stats_url = deployment_url + "/stats"
        self.replica = replica
        self.stats = stats
        self.records: collections.deque = collections.deque()
        self.max_buffered = max_buffered
        self.dropped = 0
        self.sent = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task] = []
        self._failing = {"predictions": False, "stats": False}

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._predictions_loop(), name="post-predictions"),
            asyncio.create_task(self._stats_loop(), name="post-stats"),
        ]

    def poke(self) -> None:
        """Post now if enough records wait (called by the event loop after each call)."""
        if len(self.records) >= FLUSH_RECORDS:
            self._wake.set()

    async def stop(self, attempts: int = 5) -> None:
        """Stop the loops, then post every buffered record and the final stats.

        A post under way is let finish (cancelling it could lose or duplicate its records).
        Failed posts are tried again after 0.25, 0.5, 1 and 2 s.
        """
        self._stopping = True
        self._wake.set()
        predictions, stats = self._tasks or (None, None)
        if stats is not None:
            stats.cancel()
            await asyncio.gather(predictions, stats, return_exceptions=True)
        delay = 0.25
        for attempt in range(attempts):
            if await self.flush():
                break
            if attempt + 1 < attempts:
                await asyncio.sleep(delay)
                delay *= 2
        if self.records:
            log.warning("%d prediction records could not be sent and are lost", len(self.records))
        await self.post_stats()

    async def _predictions_loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_SECONDS)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> bool:
        """Post what is buffered now, in chunks; False if a post failed (its records are kept).

        Records added meanwhile wait for the next flush: posting them at once would turn a busy
        replica's flush into a stream of small posts. A chunk the control plane refuses as
        invalid (400, 413, 422) is split in halves until the record at fault is alone; that one
        is dropped and logged, the others are sent.
        """
        records = self.records
        left, size = len(records), MAX_PER_POST
        while left and records:
            batch = [records.popleft() for _ in range(min(left, len(records), size))]
            outcome, refusal = "failed", ""
            try:
                body = encode_records(batch)
                response = await self._http.post(self._predictions_url, content=body, headers=JSON)
                if response.status_code < 300:
                    outcome = "posted"
                elif response.status_code in REFUSED:
                    outcome, refusal = "refused", _message(response)
                else:
                    raise ControlPlaneError(response)
            except Exception as exc:
                if not self._failing["predictions"]:
                    log.warning(
                        "could not post prediction metrics (%s); %d records kept for the next try",
                        describe(exc),
                        len(records) + len(batch),
                    )
                self._failing["predictions"] = True
            finally:
                if outcome == "failed":  # or cancelled: the records go with a later post
                    records.extendleft(reversed(batch))
                    self._trim()
            if outcome == "failed":
                return False
            if self._failing["predictions"]:
                log.info("prediction metrics posted again")
                self._failing["predictions"] = False
            if outcome == "refused" and len(batch) > 1:
                records.extendleft(reversed(batch))
                size = len(batch) // 2
                continue
            left -= len(batch)
            if outcome == "refused":
                self.dropped += 1
                log.warning(
                    "the control plane refused the metrics of prediction %s: %s",
                    batch[0][0],
                    refusal,
                )
                size = MAX_PER_POST
            else:
                self.sent += len(batch)
        return True

    def _trim(self) -> None:
        excess = len(self.records) - self.max_buffered
        if excess > 0:
            for _ in range(excess):
                self.records.popleft()
            self.dropped += excess
            log.warning(
                "prediction metrics buffer full (%d): dropped the %d oldest records (%d in all)",
                self.max_buffered,
                excess,
                self.dropped,
            )

    async def _stats_loop(self) -> None:
        next_at = time.monotonic()
        while True:
            next_at += STATS_SECONDS
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            self._trim()
            await self.post_stats()

    async def post_stats(self) -> bool:
        body = {"replica": self.replica, "stats": self.stats.snapshot()}
        try:
            response = await self._http.post(
                self._stats_url, content=orjson.dumps(body), headers=JSON
            )
            if response.status_code >= 300:
                raise ControlPlaneError(response)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._failing["stats"]:
                log.warning("could not post stats (%s); trying again every 2 s", describe(exc))
            self._failing["stats"] = True
            return False
        self._failing["stats"] = False
        return True


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message") or response.status_code)
    except (ValueError, AttributeError):
        return f"HTTP {response.status_code}"


def encode_records(batch: list) -> bytes:
    """`{"records": batch}` as JSON; records that cannot be encoded are dropped and logged."""
    try:
        return orjson.dumps({"records": batch}, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        pass
    good = []
    for record in batch:
        try:
            orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError as exc:
            log.warning("dropped the metrics of prediction %s: not JSON (%s)", record[0], exc)
            continue
        good.append(record)
    return orjson.dumps({"records": good}, option=orjson.OPT_SERIALIZE_NUMPY)
