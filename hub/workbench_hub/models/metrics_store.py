"""The model metrics store (docs/model-metrics.md).

Every record is one row of ``model_metrics``:

- ``prediction``: the metrics a replica tracked while answering one call, keyed by the
  prediction's uuid, with the call's start and end time;
- ``delayed``: metrics added later to a prediction (ground truth); stored with the
  prediction's deployment and times, and merged into it when read;
- ``aggregate``: metrics of a time window of a deployment, with no prediction;
- ``rollup``: per-prediction rows older than the retention, summarised per deployment and
  rollup interval (count, and mean/min/max of each numeric metric).

Metrics are stored as JSON text serialised once, with orjson, when written; reads parse it
with orjson. On PostgreSQL prediction batches are written with ``COPY``.
"""

import asyncio
import contextlib
import math
import re
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import orjson
from sqlalchemy import Text, cast, delete, exists, select, update
from sqlalchemy import text as sql_text
from sqlalchemy.orm import aliased
from traitlets import Any, Float, Int, TraitError, validate
from traitlets.config import LoggingConfigurable

from workbench_hub.orm import ModelDeployment, ModelMetric

#: largest value of a BIGINT column (times are milliseconds since the epoch)
MAX_MS = 2**63 - 1
#: what a prediction uuid may look like (the replicas send UUIDs; at most 36 characters)
UUID_PATTERN = re.compile(r"[0-9A-Za-z._:-]{1,36}")

_TABLE = ModelMetric.__table__
_COLUMNS = ("deployment_id", "kind", "prediction_uuid", "start_ms", "end_ms", "metrics")
_COPY_SQL = f"COPY model_metrics ({', '.join(_COLUMNS)}) FROM STDIN"
_INSERT_SQL = (
    "INSERT INTO model_metrics (deployment_id, kind, prediction_uuid, start_ms, end_ms, metrics)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
#: rows per COPY write call / ids per ``IN (…)`` list (SQLite allows 999 parameters on old
#: versions)
_COPY_CHUNK = 2000
_IN_CHUNK = 900


class MetricsInvalid(ValueError):
    """Bad metrics input; nothing was written. `field` names the request field at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class DeploymentNotFound(LookupError):
    """The deployment written to does not exist (any more); nothing was written."""

    def __init__(self, deployment_id: int) -> None:
        self.message = f"deployment {deployment_id} does not exist"
        super().__init__(self.message)


class PredictionNotFound(LookupError):
    """No prediction has (one of) the given uuid(s); nothing was written."""

    def __init__(self, uuids: Sequence[str]) -> None:
        self.uuids = list(uuids)
        more = f" (and {len(self.uuids) - 1} more)" if len(self.uuids) > 1 else ""
        self.message = f"no prediction {self.uuids[0]!r}{more}"
        super().__init__(self.message)


# ---------------------------------------------------------------- validation


def check_uuid(value, where: str = "predictionUuid", field: str | None = None) -> str:
    """`value` if it is a prediction uuid (a string of 1 to 36 letters, digits, ``._:-``)."""
    if not isinstance(value, str) or not UUID_PATTERN.fullmatch(value):
        raise MetricsInvalid(
            f"{where} must be a prediction uuid: a string of 1 to 36 letters, digits,"
            f" '.', '_', ':' or '-', got {_short(value)}",
            field,
        )
    return value


def check_window(start, end, where: str = "", field: str | None = None) -> tuple[int, int]:
    """`(start, end)` if both are integer milliseconds ≥ 0 and start ≤ end."""
    prefix = f"{where}: " if where else ""
    for name, value in (("startTimeStampMs", start), ("endTimeStampMs", end)):
        if type(value) is not int or not 0 <= value <= MAX_MS:
            raise MetricsInvalid(
                f"{prefix}{name} must be an integer ≥ 0 (milliseconds since the epoch),"
                f" got {_short(value)}",
                field or name,
            )
    if end < start:
        raise MetricsInvalid(
            f"{prefix}endTimeStampMs ({end}) is before startTimeStampMs ({start})",
            field or "endTimeStampMs",
        )
    return start, end


def dump_metrics(value, where: str = "metrics", field: str | None = None) -> bytes:
    """`value` as JSON text (orjson) if it is a dict of JSON values with string keys."""
    if not isinstance(value, dict):
        raise MetricsInvalid(f"{where} must be a JSON object, got {_short(value)}", field)
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError) as e:
        raise MetricsInvalid(f"{where} is not storable as JSON: {e}", field) from None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _prediction_row(index: int, record) -> tuple[str, int, int, bytes]:
    where = f"records[{index}]"
    if not isinstance(record, list | tuple) or len(record) != 4:
        raise MetricsInvalid(
            f"{where} must be a list [predictionUuid, startTimeStampMs, endTimeStampMs,"
            f" metrics], got {_short(record)}",
            "records",
        )
    uuid, start, end, metrics = record
    check_uuid(uuid, f"{where}: predictionUuid", "records")
    check_window(start, end, where, "records")
    return uuid, start, end, dump_metrics(metrics, f"{where}: metrics", "records")


def checked_predictions(records: Sequence, start: int, stop: int) -> list[tuple]:
    """``records[start:stop]`` as checked ``(uuid, start, end, JSON bytes)`` tuples.

    The common case takes a fast path; anything it does not accept goes through the full
    checks, which name the record at fault.
    """
    match, dumps = UUID_PATTERN.fullmatch, orjson.dumps
    out = []
    for i in range(start, stop):
        record = records[i]
        if (type(record) is list or type(record) is tuple) and len(record) == 4:
            uuid, begin, end, metrics = record
            if (
                type(begin) is int
                and type(end) is int
                and type(metrics) is dict
                and type(uuid) is str
                and 0 <= begin <= end <= MAX_MS
                and match(uuid)
            ):
                try:
                    out.append((uuid, begin, end, dumps(metrics)))
                    continue
                except (orjson.JSONEncodeError, TypeError):
                    pass
        out.append(_prediction_row(i, record))
    return out


def check_delayed(records: Sequence[tuple[str, dict]], batch: bool) -> list[tuple[str, bytes]]:
    """``(uuid, metrics)`` pairs as checked ``(uuid, JSON bytes)``; errors name the field
    ``predictionUuid`` or ``metrics``, or ``records[i]`` for a `batch`."""
    checked = []
    for i, (uuid, metrics) in enumerate(records):
        if batch:
            check_uuid(uuid, f"records[{i}]: predictionUuid", "records")
            text = dump_metrics(metrics, f"records[{i}]: metrics", "records")
        else:
            check_uuid(uuid, "predictionUuid", "predictionUuid")
            text = dump_metrics(metrics, "metrics", "metrics")
        checked.append((uuid, text))
    return checked


# ---------------------------------------------------------------- rollups


def _is_number(value) -> bool:
    return (type(value) is int or type(value) is float) and math.isfinite(value)


def _merge_stats(into: dict, key: str, value: float) -> None:
    stats = into.get(key)
    if stats is None:
        into[key] = {"count": 1, "sum": float(value), "min": value, "max": value}
    else:
        stats["count"] += 1
        stats["sum"] += value
        stats["min"] = min(stats["min"], value)
        stats["max"] = max(stats["max"], value)


def _combine_rollups(old: dict, new: dict) -> dict:
    """One stored rollup from two of the same bucket (exact: sums, not means, are kept)."""
    keys = dict(old.get("metrics", {}))
    for key, stats in new["metrics"].items():
        before = keys.get(key)
        if before is None:
            keys[key] = stats
        else:
            keys[key] = {
                "count": before["count"] + stats["count"],
                "sum": before["sum"] + stats["sum"],
                "min": min(before["min"], stats["min"]),
                "max": max(before["max"], stats["max"]),
            }
    return {"count": old.get("count", 0) + new["count"], "metrics": keys}


def rollup_record(start_ms: int, end_ms: int, stored: dict) -> dict:
    """A stored rollup as read: mean/min/max/count per numeric metric, and the count."""
    return {
        "startTimeStampMs": start_ms,
        "endTimeStampMs": end_ms,
        "predictionUuid": None,
        "metrics": {
            key: {
                "mean": s["sum"] / s["count"],
                "min": s["min"],
                "max": s["max"],
                "count": s["count"],
            }
            for key, s in stored.get("metrics", {}).items()
        },
        "rollup": {"count": stored.get("count", 0)},
    }


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _copy_lines(rows: Iterable[tuple]) -> bytes:
    r"""Rows as PostgreSQL COPY text: tab-separated, ``\N`` for NULL, backslashes doubled.

    Only the JSON text can hold a backslash; JSON escapes tabs and newlines itself, and uuids
    and kinds are checked to hold none of them.
    """
    return b"".join(
        b"%d\t%s\t%s\t%d\t%d\t%s\n"
        % (
            deployment_id,
            kind.encode(),
            b"\\N" if uuid is None else uuid.encode(),
            start,
            end,
            text.replace(b"\\", b"\\\\"),
        )
        for deployment_id, kind, uuid, start, end, text in rows
    )


def _prediction_lines(deployment_id: int, rows: list[tuple]) -> bytes:
    """Checked predictions as COPY text (see `_copy_lines`)."""
    prefix = b"%d\tprediction\t" % deployment_id
    return b"".join(
        b"%s%s\t%d\t%d\t%s\n" % (prefix, uuid.encode(), start, end, text.replace(b"\\", b"\\\\"))
        for uuid, start, end, text in rows
    )


#: deployment ids found in model_metrics (skipping from one to the next along the
#: (deployment_id, start_ms) index) that model_deployments no longer has
_ORPHANED_DEPLOYMENTS = sql_text(
    """
    WITH RECURSIVE ids(id) AS (
        SELECT (SELECT deployment_id FROM model_metrics ORDER BY deployment_id LIMIT 1)
        UNION ALL
        SELECT (
            SELECT m.deployment_id FROM model_metrics m
            WHERE m.deployment_id > ids.id ORDER BY m.deployment_id LIMIT 1
        )
        FROM ids WHERE ids.id IS NOT NULL
    )
    SELECT id FROM ids
    WHERE id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM model_deployments d WHERE d.id = ids.id)
    """
)
_DELETE_SOME_OF_DEPLOYMENT = sql_text(
    "DELETE FROM model_metrics WHERE id IN"
    " (SELECT id FROM model_metrics WHERE deployment_id = :deployment LIMIT :limit)"
)


def now_ms() -> int:
    return int(time.time() * 1000)


class MetricsStore(LoggingConfigurable):
    """Per-prediction, delayed and aggregate metrics of deployments, in the workbench database."""

    db = Any(help="the workbench Database (workbench_hub.db)")

    prediction_retention_days = Int(
        90,
        min=0,
        help="""Days per-prediction metrics (and the delayed metrics merged into them) are
        kept. Older ones are replaced by one rollup record per deployment and rollup_interval
        holding the number of predictions and, for each numeric metric, its mean, minimum and
        maximum. 0 keeps every prediction forever. Aggregate metrics are always kept.""",
    ).tag(config=True)

    rollup_interval = Int(
        3600,
        help="""Width in seconds of the time buckets old predictions are rolled up into
        (default: hourly). Must divide a day evenly: buckets line up with days (UTC).""",
    ).tag(config=True)

    @validate("rollup_interval")
    def _check_rollup_interval(self, proposal):
        value = proposal.value
        if value <= 0 or 86400 % value:
            raise TraitError(
                f"MetricsStore.rollup_interval must divide 86400 seconds evenly, got {value}"
            )
        return value

    retention_check_interval = Float(
        3600.0,
        min=0.01,
        help="""Seconds between two passes of the maintenance loop, which deletes the metrics
        of deployments that no longer exist and rolls up per-prediction metrics older than
        prediction_retention_days. The first pass runs retention_first_delay seconds after
        the control plane starts.""",
    ).tag(config=True)

    retention_first_delay = Float(
        60.0, min=0.0, help="Seconds after start before the first maintenance pass."
    ).tag(config=True)

    retention_batch_size = Int(
        10000,
        min=1,
        help="""Predictions rolled up and deleted per transaction by the retention pass.
        Smaller batches hold locks for less time; larger ones finish sooner.""",
    ).tag(config=True)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._loop_task: asyncio.Task | None = None
        self._retention_lock = asyncio.Lock()

    @property
    def _is_postgres(self) -> bool:
        return self.db.engine.dialect.name == "postgresql"

    async def start(self) -> None:
        """Start the retention loop."""
        self._loop_task = asyncio.create_task(self._retention_loop(), name="metrics-retention")

    async def stop(self) -> None:
        """Stop the retention loop (a pass in progress is rolled back, its batch kept)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None

    # ---------------------------------------------------------------- writes

    async def add_predictions(
        self, deployment_id: int, records: Sequence, crn: str | None = None
    ) -> int:
        """Store `records`, each ``[uuid, start_ms, end_ms, metrics]``, of one deployment.

        One bad record raises MetricsInvalid (naming its index) and nothing is written: the
        batch is one transaction. On PostgreSQL the records are checked chunk by chunk while
        earlier chunks stream into COPY, so the server works while Python checks. The
        deployment (with that `crn` if given) must exist: DeploymentNotFound otherwise.
        Returns the number of records written.
        """
        if not isinstance(records, list | tuple):
            raise MetricsInvalid("records must be a list", "records")
        if not records:
            return 0
        if not self._is_postgres:
            rows = checked_predictions(records, 0, len(records))
            async with self.db.engine.begin() as conn:
                await self._hold_deployment(conn, deployment_id, crn)
                await conn.exec_driver_sql(
                    _INSERT_SQL,
                    [(deployment_id, "prediction", u, s, e, t.decode()) for u, s, e, t in rows],
                )
            return len(rows)
        async with self.db.engine.begin() as conn:
            await self._hold_deployment(conn, deployment_id, crn)
            driver = (await conn.get_raw_connection()).driver_connection
            async with driver.cursor() as cursor, cursor.copy(_COPY_SQL) as copy:
                for start in range(0, len(records), _COPY_CHUNK):
                    stop = min(start + _COPY_CHUNK, len(records))
                    rows = checked_predictions(records, start, stop)
                    await copy.write(_prediction_lines(deployment_id, rows))
        return len(records)

    async def _hold_deployment(self, conn, deployment_id: int, crn: str | None) -> None:
        """DeploymentNotFound unless the deployment exists; on PostgreSQL, lock it against
        deletion until the transaction ends (what a foreign key would do, once per batch
        instead of once per row)."""
        query = select(ModelDeployment.id).where(ModelDeployment.id == deployment_id)
        if crn is not None:
            query = query.where(ModelDeployment.crn == crn)
        found = await conn.scalar(query.with_for_update(read=True, key_share=True))
        if found is None:
            raise DeploymentNotFound(deployment_id)

    async def add_aggregate(
        self, deployment_id: int, start_ms: int, end_ms: int, metrics: dict
    ) -> None:
        """Store metrics of the window [start_ms, end_ms] of a deployment."""
        check_window(start_ms, end_ms)
        text = dump_metrics(metrics)
        async with self.db.engine.begin() as conn:
            await self._hold_deployment(conn, deployment_id, None)
            await self._write(conn, [(deployment_id, "aggregate", None, start_ms, end_ms, text)])

    async def add_delayed(self, prediction_uuid: str, metrics: dict) -> int:
        """Merge `metrics` into the prediction `prediction_uuid` (as later keys override).

        Returns the prediction's deployment id; PredictionNotFound if there is none.
        """
        found = await self.add_delayed_many([(prediction_uuid, metrics)], batch=False)
        return found[prediction_uuid]

    async def add_delayed_many(
        self, records: Sequence[tuple[str, dict]], batch: bool = True
    ) -> dict[str, int]:
        """`add_delayed` for many ``(uuid, metrics)`` pairs, all or nothing.

        Returns uuid → deployment id. Raises MetricsInvalid or PredictionNotFound (listing
        every unknown uuid) and then writes nothing.
        """
        checked = check_delayed(records, batch)
        if not checked:
            return {}
        async with self.db.engine.begin() as conn:
            found = await self._predictions(conn, [uuid for uuid, _ in checked])
            missing = [uuid for uuid, _ in checked if uuid not in found]
            if missing:
                raise PredictionNotFound(list(dict.fromkeys(missing)))
            # a delayed row carries its prediction's deployment and times: read windows and
            # retention then select it together with its prediction
            await self._write(
                conn,
                [
                    (found[uuid][0], "delayed", uuid, found[uuid][1], found[uuid][2], text)
                    for uuid, text in checked
                ],
            )
        return {uuid: row[0] for uuid, row in found.items()}

    async def prediction_deployments(self, uuids: Sequence[str]) -> dict[str, int]:
        """uuid → deployment id of the predictions among `uuids` (unknown ones are absent)."""
        async with self.db.engine.connect() as conn:
            found = await self._predictions(conn, uuids)
        return {uuid: row[0] for uuid, row in found.items()}

    async def _predictions(self, conn, uuids: Sequence[str]) -> dict[str, tuple[int, int, int]]:
        """uuid → (deployment id, start, end) of the first prediction with that uuid."""
        unique = list(dict.fromkeys(uuids))
        found: dict[str, tuple[int, int, int]] = {}
        for chunk in _chunks(unique, _IN_CHUNK):
            rows = await conn.execute(
                select(
                    _TABLE.c.prediction_uuid,
                    _TABLE.c.deployment_id,
                    _TABLE.c.start_ms,
                    _TABLE.c.end_ms,
                )
                .where(_TABLE.c.kind == "prediction", _TABLE.c.prediction_uuid.in_(chunk))
                .order_by(_TABLE.c.id)
            )
            for uuid, deployment_id, start, end in rows:
                found.setdefault(uuid, (deployment_id, start, end))
        return found

    async def _write(self, conn, rows: list[tuple]) -> None:
        """Insert `rows` (deployment_id, kind, uuid, start, end, JSON bytes) on `conn`.

        PostgreSQL: one COPY through psycopg on the connection's transaction. SQLite: one
        executemany.
        """
        if self._is_postgres:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            async with driver.cursor() as cursor, cursor.copy(_COPY_SQL) as copy:
                for chunk in _chunks(rows, _COPY_CHUNK):
                    await copy.write(_copy_lines(chunk))
        else:
            await conn.exec_driver_sql(
                _INSERT_SQL,
                [(*row[:5], row[5].decode()) for row in rows],
            )

    # ---------------------------------------------------------------- reads

    async def read(
        self,
        deployment_ids: Sequence[int],
        start_ms: int = 0,
        end_ms: int | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict]:
        """Records of the deployments whose start lies in [start_ms, end_ms] (default: now).

        Each is ``{"startTimeStampMs", "endTimeStampMs", "predictionUuid", "metrics"}``:
        predictions with their delayed metrics merged in (later ones override earlier keys),
        aggregates and rollups with ``predictionUuid`` None (rollups also carry ``"rollup":
        {"count"}``), ordered by start time, then by when they were written. `limit` (None:
        all) and `offset` count records: the database pages the predictions, aggregates and
        rollups, then reads the delayed metrics of that page's predictions.
        """
        if end_ms is None:
            end_ms = now_ms()
        if not deployment_ids or end_ms < start_ms:
            return []
        statement = (
            select(
                _TABLE.c.kind,
                _TABLE.c.prediction_uuid,
                _TABLE.c.start_ms,
                _TABLE.c.end_ms,
                cast(_TABLE.c.metrics, Text),
            )
            .where(
                _TABLE.c.deployment_id.in_(list(deployment_ids)),
                _TABLE.c.start_ms >= start_ms,
                _TABLE.c.start_ms <= end_ms,
            )
            .order_by(_TABLE.c.start_ms, _TABLE.c.id)
        )
        async with self.db.engine.connect() as conn:
            if limit is None:
                rows = (await conn.execute(statement)).all()
            else:
                records = statement.where(_TABLE.c.kind != "delayed").limit(limit).offset(offset)
                rows = (await conn.execute(records)).all()
                uuids = {row.prediction_uuid for row in rows if row.kind == "prediction"}
                delayed = statement.where(
                    _TABLE.c.kind == "delayed", _TABLE.c.prediction_uuid.in_(uuids)
                )
                rows += (await conn.execute(delayed)).all() if uuids else []
        loads = orjson.loads
        delayed: dict[str, list[str]] = {}
        for kind, uuid, _, _, text in rows:
            if kind == "delayed":
                delayed.setdefault(uuid, []).append(text)
        records = []
        for kind, uuid, start, end, text in rows:
            if kind == "prediction":
                metrics = loads(text)
                for later in delayed.get(uuid, ()):
                    metrics.update(loads(later))
                records.append(
                    {
                        "startTimeStampMs": start,
                        "endTimeStampMs": end,
                        "predictionUuid": uuid,
                        "metrics": metrics,
                    }
                )
            elif kind == "aggregate":
                records.append(
                    {
                        "startTimeStampMs": start,
                        "endTimeStampMs": end,
                        "predictionUuid": None,
                        "metrics": loads(text),
                    }
                )
            elif kind == "rollup":
                records.append(rollup_record(start, end, loads(text)))
        return records

    # ---------------------------------------------------------------- retention

    async def _retention_loop(self) -> None:
        await asyncio.sleep(self.retention_first_delay)
        while True:
            try:
                await self.maintain(datetime.now(UTC))
            except Exception:
                self.log.exception(
                    "Model metrics maintenance failed; retrying in %ss",
                    self.retention_check_interval,
                )
            await asyncio.sleep(self.retention_check_interval)

    async def maintain(self, now: datetime) -> dict[str, int]:
        """One pass of the background loop: `remove_orphans`, then `apply_retention`."""
        orphans = await self.remove_orphans()
        result = await self.apply_retention(now)
        if orphans or result["predictions"]:
            self.log.info(
                "Model metrics: %i records of deleted deployments removed; %i predictions and"
                " %i delayed records rolled up",
                orphans,
                result["predictions"],
                result["delayed"],
            )
        return {**result, "orphans": orphans}

    async def remove_orphans(self) -> int:
        """Delete metrics whose deployment no longer exists; the number of rows deleted.

        The trigger of migration 0003 deletes a deployment's metrics with it; rows a replica
        was writing while its deployment was deleted are left over, and removed here.
        """
        removed = 0
        async with self.db.engine.connect() as conn:
            orphaned = (await conn.execute(_ORPHANED_DEPLOYMENTS)).scalars().all()
        for deployment_id in orphaned:
            while True:
                async with self.db.engine.begin() as conn:
                    result = await conn.execute(
                        _DELETE_SOME_OF_DEPLOYMENT,
                        {"deployment": deployment_id, "limit": self.retention_batch_size},
                    )
                removed += result.rowcount
                if result.rowcount < self.retention_batch_size:
                    break
        return removed

    def retention_cutoff_ms(self, now: datetime) -> int | None:
        """Predictions starting before this are rolled up (None: retention is off).

        The cutoff is at a bucket boundary, so a bucket is rolled up whole.
        """
        if self.prediction_retention_days <= 0:
            return None
        if now.tzinfo is None:
            raise ValueError("apply_retention needs an aware datetime")
        interval_ms = self.rollup_interval * 1000
        cutoff = int(now.timestamp() * 1000) - self.prediction_retention_days * 86_400_000
        return max(0, cutoff - cutoff % interval_ms)

    async def apply_retention(self, now: datetime) -> dict[str, int]:
        """Roll up and delete the predictions older than the retention, as of `now`.

        Per deployment, batches of retention_batch_size predictions (oldest first) and their
        delayed metrics become rollup records, merged into an existing rollup of the same
        bucket; each batch is one transaction. Returns counts of predictions and delayed
        records removed and of rollup records written or updated.
        """
        totals = {"predictions": 0, "delayed": 0, "rollups": 0}
        cutoff = self.retention_cutoff_ms(now)
        if cutoff is None:
            return totals
        async with self._retention_lock:
            async with self.db.engine.connect() as conn:
                deployment_ids = (await conn.scalars(select(ModelDeployment.id))).all()
            for deployment_id in deployment_ids:
                while True:
                    counts = await self._roll_batch(deployment_id, cutoff)
                    for key, value in counts.items():
                        totals[key] += value
                    if counts["predictions"] < self.retention_batch_size:
                        break
                totals["delayed"] += await self._drop_orphans(deployment_id, cutoff)
        return totals

    async def _roll_batch(self, deployment_id: int, cutoff: int) -> dict[str, int]:
        t = _TABLE.c
        interval_ms = self.rollup_interval * 1000
        async with self.db.engine.begin() as conn:
            predictions = (
                await conn.execute(
                    select(t.id, t.prediction_uuid, t.start_ms, cast(t.metrics, Text))
                    .where(
                        t.deployment_id == deployment_id,
                        t.kind == "prediction",
                        t.start_ms < cutoff,
                    )
                    .order_by(t.start_ms, t.id)
                    .limit(self.retention_batch_size)
                )
            ).all()
            if not predictions:
                return {"predictions": 0, "delayed": 0, "rollups": 0}
            uuids = {p.prediction_uuid for p in predictions}
            # delayed rows carry their prediction's start: they lie in the batch's time range
            delayed = [
                row
                for row in await conn.execute(
                    select(t.id, t.prediction_uuid, cast(t.metrics, Text))
                    .where(
                        t.deployment_id == deployment_id,
                        t.kind == "delayed",
                        t.start_ms >= predictions[0].start_ms,
                        t.start_ms <= predictions[-1].start_ms,
                    )
                    .order_by(t.start_ms, t.id)
                )
                if row.prediction_uuid in uuids
            ]
            later: dict[str, list[dict]] = {}
            for row in delayed:
                later.setdefault(row.prediction_uuid, []).append(orjson.loads(row[2]))
            buckets: dict[int, dict] = {}
            for prediction in predictions:
                metrics = orjson.loads(prediction[3])
                for extra in later.get(prediction.prediction_uuid, ()):
                    metrics.update(extra)
                bucket = prediction.start_ms - prediction.start_ms % interval_ms
                summary = buckets.setdefault(bucket, {"count": 0, "metrics": {}})
                summary["count"] += 1
                for key, value in metrics.items():
                    if _is_number(value):
                        _merge_stats(summary["metrics"], key, value)
            existing = {
                row.start_ms: row
                for row in await conn.execute(
                    select(t.id, t.start_ms, cast(t.metrics, Text)).where(
                        t.deployment_id == deployment_id,
                        t.kind == "rollup",
                        t.start_ms.in_(list(buckets)),
                    )
                )
            }
            new_rows = []
            for bucket, summary in buckets.items():
                if bucket in existing:
                    row = existing[bucket]
                    merged = _combine_rollups(orjson.loads(row[2]), summary)
                    await conn.execute(update(_TABLE).where(t.id == row.id).values(metrics=merged))
                else:
                    new_rows.append(
                        (
                            deployment_id,
                            "rollup",
                            None,
                            bucket,
                            bucket + interval_ms - 1,
                            orjson.dumps(summary),
                        )
                    )
            if new_rows:
                await self._write(conn, new_rows)
            ids = [p.id for p in predictions] + [d.id for d in delayed]
            for chunk in _chunks(ids, _IN_CHUNK):
                await conn.execute(delete(_TABLE).where(t.id.in_(chunk)))
        return {"predictions": len(predictions), "delayed": len(delayed), "rollups": len(buckets)}

    async def _drop_orphans(self, deployment_id: int, cutoff: int) -> int:
        """Delete old delayed rows whose prediction is gone (added while it was rolled up)."""
        prediction = aliased(_TABLE)
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                delete(_TABLE).where(
                    _TABLE.c.deployment_id == deployment_id,
                    _TABLE.c.kind == "delayed",
                    _TABLE.c.start_ms < cutoff,
                    ~exists().where(
                        prediction.c.kind == "prediction",
                        prediction.c.prediction_uuid == _TABLE.c.prediction_uuid,
                    ),
                )
            )
        return result.rowcount or 0
