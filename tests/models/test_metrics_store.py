"""The model metrics store on SQLite and PostgreSQL: what is written is what is read."""

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, event, func, insert, select

from tests.models.rows import build_row, deployment_row, model_row
from workbench_hub.db import Database
from workbench_hub.models import new_crn
from workbench_hub.models.metrics_store import (
    DeploymentNotFound,
    MetricsInvalid,
    MetricsStore,
    PredictionNotFound,
)
from workbench_hub.orm import ModelDeployment, ModelMetric, Project

#: 2023-11-14T22:13:20Z: a fixed base time for predictions
BASE_MS = 1_700_000_000_000
HOUR_MS = 3_600_000
#: text that COPY must escape and JSON must carry through unchanged
AWKWARD = 'tab\there "quoted" back\\slash \\N\nnewline\r ü 日本 \u2028'


@pytest.fixture
async def db(db_url):
    database = Database(db_url)
    yield database
    await database.dispose()


async def seed_deployments(db: Database, count: int = 1, project: str = "demo") -> list[int]:
    """A project with one model, one build and `count` deployments of it; their ids."""
    async with db.session() as session:
        owner = Project(name=project, owner_kind="user", owner_name="alice")
        session.add(owner)
        await session.flush()
        model = model_row(owner.id)
        session.add(model)
        await session.flush()
        build = build_row(model)
        session.add(build)
        await session.flush()
        deployments = [
            deployment_row(model.id, build.id, number=n + 1, token=f"token-{n}")
            for n in range(count)
        ]
        session.add_all(deployments)
        await session.commit()
        return [d.id for d in deployments]


async def row_counts(db: Database) -> dict[str, int]:
    async with db.session() as session:
        rows = await session.execute(
            select(ModelMetric.kind, func.count()).group_by(ModelMetric.kind)
        )
        return dict(rows.all())


def mixed_metrics(i: int) -> dict:
    """Tracked metrics of prediction `i`: floats, ints, strings, lists, dicts, null, bools."""
    return {
        "probability": i / 9973,
        "label": i % 3,
        "species": ["setosa", "versicolor", "virginica"][i % 3],
        "features": [5.1 + i / 1000, i, "cm", None],
        "explanation": {"top": ["petal_length", "petal_width"], "weight": -i * 1e-3, "ok": True},
        "note": AWKWARD if i % 1000 == 0 else "",
        "big": 2**62 + i,
    }


def prediction(i: int, start: int | None = None) -> list:
    start = BASE_MS + i * 250 if start is None else start
    return [f"00000000-0000-4000-8000-{i:012d}", start, start + i % 40, mixed_metrics(i)]


def as_read(record: list, extra: dict | None = None) -> dict:
    uuid, start, end, metrics = record
    return {
        "startTimeStampMs": start,
        "endTimeStampMs": end,
        "predictionUuid": uuid,
        "metrics": {**metrics, **(extra or {})},
    }


class Statements:
    """Counts the SQL statements sent through an engine."""

    def __init__(self, db: Database) -> None:
        self.count = 0
        self.engine = db.engine.sync_engine
        event.listen(self.engine, "before_cursor_execute", self._seen)

    def _seen(self, *args) -> None:
        self.count += 1

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)


async def test_ten_thousand_predictions_with_delayed_and_aggregate_read_back_exactly(db):
    """The acceptance test: what replicas, track_delayed_metrics and
    track_aggregate_metrics wrote is what read_metrics returns, in order."""
    [deployment] = await seed_deployments(db)
    store = MetricsStore(db=db)
    records = [prediction(i) for i in range(10_000)]
    for batch in (records[:5000], records[5000:]):
        assert await store.add_predictions(deployment, batch) == 5000

    # ground truth for every second prediction, given in two calls for some: the later
    # call overrides the earlier keys and the keys tracked while serving
    delayed = {}
    first = [(records[i][0], {"actual": i % 3, "probability": -1.0}) for i in range(0, 10_000, 2)]
    found = await store.add_delayed_many(first)
    assert found == {uuid: deployment for uuid, _ in first}
    for i in range(0, 10_000, 2):
        delayed[i] = {"actual": i % 3, "probability": -1.0}
    for i in range(0, 10_000, 10):
        truth = {"actual": "corrected", "reviewer": {"name": "bob", "scores": [1, 2.5]}}
        assert await store.add_delayed(records[i][0], truth) == deployment
        delayed[i] = {**delayed[i], **truth}

    window = (BASE_MS + 1000 * 250 + 1, BASE_MS + 1500 * 250)
    aggregate = {"accuracy": 0.93, "confusion": [[10, 1], [2, 12]], "model": "v1"}
    await store.add_aggregate(deployment, *window, aggregate)

    expected = [as_read(record, delayed.get(i)) for i, record in enumerate(records)]
    expected.insert(
        1001,
        {
            "startTimeStampMs": window[0],
            "endTimeStampMs": window[1],
            "predictionUuid": None,
            "metrics": aggregate,
        },
    )
    statements = Statements(db)
    try:
        got = await store.read([deployment])
    finally:
        statements.close()
    assert len(got) == 10_001
    assert got == expected
    assert statements.count == 1, "read must not query once per record"
    assert got[0]["metrics"]["note"] == AWKWARD
    assert got[0]["metrics"]["big"] == 2**62
    assert await row_counts(db) == {"prediction": 10_000, "delayed": 6000, "aggregate": 1}

    # the window filters on the start time, both ends included
    start, end = BASE_MS + 100 * 250, BASE_MS + 199 * 250
    assert await store.read([deployment], start, end) == expected[100:200]
    assert await store.read([deployment], start + 1, end - 1) == expected[101:199]
    assert await store.read([deployment], window[0], window[0]) == [expected[1001]]
    assert await store.read([deployment], 0, BASE_MS - 1) == []
    assert await store.read([deployment], end, start) == []


async def test_read_keeps_deployments_apart_and_merges_them_by_time(db):
    first, second = await seed_deployments(db, count=2)
    store = MetricsStore(db=db)
    a = [prediction(i, BASE_MS + i * 10) for i in range(5)]
    b = [prediction(100 + i, BASE_MS + i * 10 + 5) for i in range(5)]
    await store.add_predictions(first, a)
    await store.add_predictions(second, b)
    await store.add_delayed(b[0][0], {"actual": 1})
    assert await store.read([first]) == [as_read(r) for r in a]
    assert await store.read([second]) == [as_read(b[0], {"actual": 1})] + [
        as_read(r) for r in b[1:]
    ]
    both = await store.read([first, second])
    assert [r["predictionUuid"] for r in both] == [
        r[0] for pair in zip(a, b, strict=True) for r in pair
    ]
    assert await store.read([]) == []


async def test_defaults_read_from_zero_to_now(db):
    [deployment] = await seed_deployments(db)
    store = MetricsStore(db=db)
    now = int(datetime.now(UTC).timestamp() * 1000)
    past, future = prediction(1, 0), prediction(2, now + 3_600_000)
    await store.add_predictions(deployment, [past, future])
    assert await store.read([deployment]) == [as_read(past)]


BAD_RECORDS = [
    (["u-1", BASE_MS, BASE_MS - 1, {}], "endTimeStampMs"),
    (["u-1", True, BASE_MS, {}], "startTimeStampMs"),
    (["u-1", BASE_MS, 1.5, {}], "endTimeStampMs"),
    (["u-1", -1, BASE_MS, {}], "startTimeStampMs"),
    (["u-1", BASE_MS, 2**63, {}], "endTimeStampMs"),
    (["x" * 37, BASE_MS, BASE_MS, {}], "predictionUuid"),
    (["bad\tuuid", BASE_MS, BASE_MS, {}], "predictionUuid"),
    ([17, BASE_MS, BASE_MS, {}], "predictionUuid"),
    (["u-1", BASE_MS, BASE_MS, [1, 2]], "metrics"),
    (["u-1", BASE_MS, BASE_MS, {"s": {1, 2}}], "metrics"),
    (["u-1", BASE_MS, BASE_MS, {1: "non-string key"}], "metrics"),
    (["u-1", BASE_MS, BASE_MS], "must be a list"),
    ({"uuid": "u-1"}, "must be a list"),
]


@pytest.mark.parametrize(("bad", "named"), BAD_RECORDS)
async def test_a_bad_record_rejects_the_whole_batch(db, bad, named):
    [deployment] = await seed_deployments(db)
    store = MetricsStore(db=db)
    good = [prediction(i) for i in range(100)]
    with pytest.raises(MetricsInvalid) as raised:
        await store.add_predictions(deployment, [*good[:57], bad, *good[57:]])
    assert "records[57]" in raised.value.message and named in raised.value.message
    assert raised.value.field == "records"
    assert await row_counts(db) == {}
    assert await store.read([deployment]) == []


async def test_delayed_metrics_for_unknown_predictions_write_nothing(db):
    [deployment] = await seed_deployments(db)
    store = MetricsStore(db=db)
    await store.add_predictions(deployment, [prediction(1), prediction(2)])
    with pytest.raises(PredictionNotFound) as raised:
        await store.add_delayed("no-such-uuid", {"actual": 1})
    assert "no-such-uuid" in raised.value.message
    with pytest.raises(PredictionNotFound) as raised:
        await store.add_delayed_many(
            [(prediction(1)[0], {"actual": 1}), ("missing-a", {}), ("missing-b", {})]
        )
    assert raised.value.uuids == ["missing-a", "missing-b"]
    with pytest.raises(MetricsInvalid) as invalid:
        await store.add_delayed_many([(prediction(1)[0], {"a": 1}), (prediction(2)[0], "x")])
    assert "records[1]: metrics" in invalid.value.message
    with pytest.raises(MetricsInvalid):
        await store.add_aggregate(deployment, BASE_MS, BASE_MS - 1, {"a": 1})
    assert await row_counts(db) == {"prediction": 2}


# ---------------------------------------------------------------- retention


def old_predictions(hours: int, per_hour: int, base: int, prefix: str = "old") -> list[list]:
    records = []
    for h in range(hours):
        for k in range(per_hour):
            i = h * per_hour + k
            start = base + h * HOUR_MS + k * 1000
            metrics = {"p": i, "score": i / 2, "label": "x", "v": [1]}
            records.append([f"{prefix}-{i}", start, start + 5, metrics])
    return records


async def test_retention_rolls_old_predictions_up_per_hour(db):
    first, second = await seed_deployments(db, count=2)
    store = MetricsStore(db=db, prediction_retention_days=30)
    now = datetime(2024, 3, 1, 12, 30, tzinfo=UTC)
    old_base = int((now - timedelta(days=40)).timestamp() * 1000)
    old_base -= old_base % HOUR_MS  # on the hour
    old = old_predictions(hours=3, per_hour=4, base=old_base)
    recent_start = int((now - timedelta(days=1)).timestamp() * 1000)
    recent = [["new-1", recent_start, recent_start + 3, {"p": 100}]]
    await store.add_predictions(first, old + recent)
    await store.add_predictions(second, old_predictions(1, 1, old_base, prefix="other"))
    await store.add_delayed("old-1", {"p": 1000, "truth": 1})  # overrides p of prediction 1
    await store.add_delayed("old-5", {"extra": 7})
    await store.add_delayed("new-1", {"truth": 0})
    aggregate_start = old_base + 10
    await store.add_aggregate(first, aggregate_start, aggregate_start + 99, {"accuracy": 0.5})

    result = await store.apply_retention(now)
    assert result == {"predictions": 13, "delayed": 2, "rollups": 4}
    got = await store.read([first])
    hour = [
        {
            "startTimeStampMs": old_base + h * HOUR_MS,
            "endTimeStampMs": old_base + (h + 1) * HOUR_MS - 1,
            "predictionUuid": None,
        }
        for h in range(3)
    ]
    # hour 0: p = 0, 1000 (delayed override), 2, 3; score 0, .5, 1, 1.5; truth once
    assert got[0] == {
        **hour[0],
        "metrics": {
            "p": {"mean": 1005 / 4, "min": 0, "max": 1000, "count": 4},
            "score": {"mean": 0.75, "min": 0.0, "max": 1.5, "count": 4},
            "truth": {"mean": 1.0, "min": 1, "max": 1, "count": 1},
        },
        "rollup": {"count": 4},
    }
    # aggregates are kept, in order of their start
    assert got[1] == {
        "startTimeStampMs": aggregate_start,
        "endTimeStampMs": aggregate_start + 99,
        "predictionUuid": None,
        "metrics": {"accuracy": 0.5},
    }
    assert got[2] == {
        **hour[1],
        "metrics": {
            "p": {"mean": 5.5, "min": 4, "max": 7, "count": 4},
            "score": {"mean": 2.75, "min": 2.0, "max": 3.5, "count": 4},
            "extra": {"mean": 7.0, "min": 7, "max": 7, "count": 1},
        },
        "rollup": {"count": 4},
    }
    assert got[3]["metrics"]["p"] == {"mean": 9.5, "min": 8, "max": 11, "count": 4}
    assert got[4:] == [as_read(recent[0], {"truth": 0})]
    assert len(got) == 5
    assert await store.read([second]) == [
        {
            **hour[0],
            "metrics": {
                "p": {"mean": 0.0, "min": 0, "max": 0, "count": 1},
                "score": {"mean": 0.0, "min": 0.0, "max": 0.0, "count": 1},
            },
            "rollup": {"count": 1},
        }
    ]
    assert await row_counts(db) == {"prediction": 1, "delayed": 1, "aggregate": 1, "rollup": 4}
    # a second pass finds nothing more
    assert await store.apply_retention(now) == {"predictions": 0, "delayed": 0, "rollups": 0}
    assert await store.read([first]) == got


async def test_retention_in_small_batches_gives_the_same_rollups(db):
    [deployment] = await seed_deployments(db)
    store = MetricsStore(db=db, prediction_retention_days=1, retention_batch_size=7)
    now = datetime(2024, 3, 1, tzinfo=UTC)
    base = int((now - timedelta(days=3)).timestamp() * 1000)
    old = old_predictions(hours=2, per_hour=25, base=base)
    random.Random(4).shuffle(old)
    await store.add_predictions(deployment, old)
    for i in range(0, 50, 3):
        await store.add_delayed(f"old-{i}", {"score": -1})
    result = await store.apply_retention(now)
    assert result["predictions"] == 50 and result["delayed"] == 17
    got = await store.read([deployment])
    assert [r["rollup"]["count"] for r in got] == [25, 25]
    scores = [[-1 if i % 3 == 0 else i / 2 for i in range(h * 25, h * 25 + 25)] for h in range(2)]
    for record, values in zip(got, scores, strict=True):
        stats = record["metrics"]["score"]
        assert stats["count"] == 25 and stats["min"] == min(values)
        assert stats["max"] == max(values)
        assert stats["mean"] == pytest.approx(sum(values) / 25)
    assert await row_counts(db) == {"rollup": 2}


async def test_retention_zero_keeps_everything(db):
    [deployment] = await seed_deployments(db)
    store = MetricsStore(db=db, prediction_retention_days=0)
    await store.add_predictions(deployment, [prediction(1, 0)])
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert await store.apply_retention(now) == {"predictions": 0, "delayed": 0, "rollups": 0}
    assert await store.read([deployment]) == [as_read(prediction(1, 0))]


async def test_retention_loop_starts_and_stops(db):
    [deployment] = await seed_deployments(db)
    store = MetricsStore(
        db=db, prediction_retention_days=1, retention_first_delay=0, retention_check_interval=0.05
    )
    await store.add_predictions(deployment, [prediction(1, 0)])
    await store.start()
    try:
        for _ in range(100):
            if await row_counts(db) == {"rollup": 1}:
                break
            await asyncio.sleep(0.05)
        assert await row_counts(db) == {"rollup": 1}
    finally:
        await store.stop()
    assert store._loop_task is None


async def test_a_bad_record_late_in_a_streamed_batch_writes_nothing(db):
    """On PostgreSQL earlier chunks are already in COPY when a late record fails."""
    [deployment] = await seed_deployments(db)
    store = MetricsStore(db=db)
    batch = [prediction(i) for i in range(5000)]
    batch[4998] = [batch[4998][0], BASE_MS, BASE_MS, {"bad": float("nan"), "set": {1}}]
    with pytest.raises(MetricsInvalid) as raised:
        await store.add_predictions(deployment, batch)
    assert "records[4998]: metrics" in raised.value.message
    assert await row_counts(db) == {}
    # the connection went back to the pool in a usable state
    assert await store.add_predictions(deployment, batch[:10]) == 10
    assert await store.read([deployment]) == [as_read(r) for r in batch[:10]]


async def test_deleting_a_deployment_model_or_project_deletes_its_metrics(db):
    first, second, third = await seed_deployments(db, count=3)
    [other] = await seed_deployments(db, project="other")
    store = MetricsStore(db=db)
    for n, deployment in enumerate((first, second, third, other)):
        await store.add_predictions(deployment, [prediction(10 * n + i) for i in range(3)])
        await store.add_aggregate(deployment, BASE_MS, BASE_MS + 1, {"n": n})
    await store.add_delayed(prediction(10)[0], {"truth": 1})
    async with db.session() as session:
        await session.delete(await session.get(ModelDeployment, second))
        await session.commit()
    assert await store.read([second]) == []
    assert len(await store.read([first])) == 4
    async with db.session() as session:
        await session.delete(await session.scalar(select(Project).where(Project.name == "demo")))
        await session.commit()
    assert await store.read([first, third]) == []
    assert await row_counts(db) == {"prediction": 3, "aggregate": 1}
    assert len(await store.read([other])) == 4


async def test_metrics_of_deployments_that_no_longer_exist_are_removed(db):
    [deployment] = await seed_deployments(db)
    store = MetricsStore(db=db, retention_batch_size=4)
    kept = [prediction(i) for i in range(5)]
    await store.add_predictions(deployment, kept)
    # rows written while their deployment was being deleted
    async with db.session() as session:
        await session.execute(
            insert(ModelMetric),
            [
                {
                    "deployment_id": deployment + 100 + i % 2,
                    "kind": "prediction",
                    "prediction_uuid": f"orphan-{i}",
                    "start_ms": BASE_MS,
                    "end_ms": BASE_MS,
                    "metrics": {"i": i},
                }
                for i in range(11)
            ],
        )
        await session.commit()
    assert await store.remove_orphans() == 11
    assert await row_counts(db) == {"prediction": 5}
    assert await store.read([deployment]) == [as_read(r) for r in kept]
    assert await store.remove_orphans() == 0
    result = await store.maintain(datetime(2024, 1, 1, tzinfo=UTC))
    assert result == {"predictions": 0, "delayed": 0, "rollups": 0, "orphans": 0}


async def test_writes_to_a_deployment_that_is_gone_write_nothing(db):
    [deployment] = await seed_deployments(db)
    store = MetricsStore(db=db)
    async with db.session() as session:
        crn = (await session.get(ModelDeployment, deployment)).crn
    with pytest.raises(DeploymentNotFound):
        await store.add_predictions(deployment + 1, [prediction(1)])
    with pytest.raises(DeploymentNotFound):
        await store.add_predictions(deployment, [prediction(1)], crn=new_crn("deployment"))
    with pytest.raises(DeploymentNotFound):
        await store.add_aggregate(deployment + 1, BASE_MS, BASE_MS, {})
    assert await row_counts(db) == {}
    assert await store.add_predictions(deployment, [prediction(1)], crn=crn) == 1


async def test_a_batch_waits_for_a_deletion_of_its_deployment_and_writes_nothing(db):
    if db.engine.dialect.name != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite serialises writers")
    [deployment] = await seed_deployments(db)
    store = MetricsStore(db=db)
    async with db.engine.connect() as conn:  # a deletion, not committed yet
        await conn.execute(delete(ModelDeployment).where(ModelDeployment.id == deployment))
        batch = asyncio.create_task(store.add_predictions(deployment, [prediction(1)]))
        await asyncio.sleep(0.5)
        assert not batch.done()
        await conn.commit()
    with pytest.raises(DeploymentNotFound):
        await batch
    assert await row_counts(db) == {}
