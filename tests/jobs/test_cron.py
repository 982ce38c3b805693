"""Cron instants across daylight-saving changes, in pure functions and through the engine."""

from datetime import UTC, datetime, timedelta

import pytest

from workbench_hub import audit
from workbench_hub.jobs import cron


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def instants(expression, tz, after, until):
    return list(cron.ticks(expression, tz, after, until))


def test_daily_0230_berlin_across_both_changes():
    # 2026-03-29: 02:00 CET → 03:00 CEST, so 02:30 does not exist: it runs at 03:30 CEST
    assert instants("30 2 * * *", "Europe/Berlin", utc(2026, 3, 27, 12), utc(2026, 3, 30, 12)) == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 30),  # 03:30 CEST (shifted by the gap)
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]
    # 2026-10-25: 03:00 CEST → 02:00 CET, so 02:30 happens twice: it runs once, the first time
    assert instants(
        "30 2 * * *", "Europe/Berlin", utc(2026, 10, 23, 12), utc(2026, 10, 26, 12)
    ) == [
        utc(2026, 10, 24, 0, 30),  # 02:30 CEST
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, first occurrence only
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
    ]


def test_hourly_runs_every_real_hour_across_fall_back_and_once_in_the_gap():
    fall = instants("0 * * * *", "Europe/Berlin", utc(2026, 10, 24, 22, 30), utc(2026, 10, 25, 3))
    # local: 01:00 CEST, 02:00 CEST, 02:00 CET, 03:00 CET, 04:00 CET: five runs, one per hour
    assert fall == [utc(2026, 10, 24, 23), *(utc(2026, 10, 25, h) for h in range(4))]
    spring = instants("0 * * * *", "Europe/Berlin", utc(2026, 3, 28, 23, 30), utc(2026, 3, 29, 3))
    # local: 01:00 CET, (02:00 does not exist) 03:00 CEST, 04:00 CEST, 05:00 CEST
    assert spring == [utc(2026, 3, 29, h) for h in range(4)]


def test_next_tick_is_strictly_after_and_validates():
    assert cron.next_tick("0 0 * * *", "UTC", utc(2026, 1, 1)) == utc(2026, 1, 2)
    assert cron.next_tick("0 0 29 2 *", "UTC", utc(2026, 3, 1)) == utc(2028, 2, 29)
    with pytest.raises(cron.InvalidCron):
        cron.validate("61 * * * *", "UTC")
    with pytest.raises(cron.InvalidCron):
        cron.validate("0 * * * *", "Mars/Olympus")
    with pytest.raises(ValueError):
        cron.next_tick("0 * * * *", "UTC", datetime(2026, 1, 1))  # noqa: DTZ001


async def scheduled(env, job_id):
    return [run.scheduled_for for run in await env.runs(job_id)]


async def test_engine_fires_exact_instants_across_dst(env):
    clock = env.clock
    project = await env.project(files={"tick.py": "print('tick')\n"})
    clock.set(utc(2026, 3, 28, 12))
    daily = await env.job(
        project,
        "daily",
        "tick.py",
        schedule="cron",
        cron="30 2 * * *",
        timezone="Europe/Berlin",
        concurrency="allow",
    )
    await env.engine.tick()
    assert (await env.get_job(daily)).next_tick == utc(2026, 3, 28, 1, 30) + timedelta(days=1)
    for instant in (utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30)):
        clock.set(instant - timedelta(seconds=1))
        before = await scheduled(env, daily)
        await env.engine.tick()
        assert await scheduled(env, daily) == before  # not a second early
        clock.set(instant)
        await env.engine.tick()
        assert (await scheduled(env, daily))[-1] == instant
    assert len(await env.runs(daily)) == 2
    await env.update_job(daily, active=False)

    clock.set(utc(2026, 10, 24, 22, 30))
    hourly = await env.job(
        project,
        "hourly",
        "tick.py",
        schedule="cron",
        cron="0 * * * *",
        timezone="Europe/Berlin",
        concurrency="allow",
    )
    await env.engine.tick()
    expected = [utc(2026, 10, 24, 23), *(utc(2026, 10, 25, h) for h in range(3))]
    for instant in expected:
        clock.set(instant - timedelta(seconds=1))
        await env.engine.tick()
        clock.set(instant)
        await env.engine.tick()
    # 02:00 CEST and 02:00 CET both ran: one run per real hour
    assert await scheduled(env, hourly) == expected
    assert [run.trigger for run in await env.runs(hourly)] == ["schedule"] * 4
    assert (await env.get_job(daily)).next_tick is None  # paused
    for run in await env.runs(hourly):
        assert (await env.ended(run.id)).state == "succeeded"


@pytest.mark.parametrize(
    ("policy", "expected_runs"),
    [("latest", [5]), ("skip", []), ("all", [1, 2, 3, 4, 5])],
)
async def test_missed_ticks_policy(make_env, policy, expected_runs):
    env = make_env(missed_ticks=policy)
    project = await env.project(files={"tick.py": "print('tick')\n"})
    env.clock.set(utc(2026, 6, 1, 0, 30))
    # a missing target fails each run at once, without a process: fast to count
    job = await env.job(
        project,
        "hourly2",
        "missing.py",
        schedule="cron",
        cron="0 * * * *",
        timezone="UTC",
        concurrency="allow",
    )
    await env.engine.tick()
    env.clock.set(utc(2026, 6, 1, 5, 30))  # the control plane was down from 00:30 to 05:30
    await env.engine.tick()
    assert await scheduled(env, job) == [utc(2026, 6, 1, h) for h in expected_runs]
    assert (await env.get_job(job)).next_tick == utc(2026, 6, 1, 6)
    async with env.db.session() as s:
        missed = await audit.query(s, action="job.tick.missed", object_id="demo/hourly2")
    expected_missed = [] if policy == "all" else [5 - len(expected_runs)]
    assert [e.detail["count"] for e in missed] == expected_missed
    await env.engine.tick()  # nothing fires twice
    assert len(await env.runs(job)) == len(expected_runs)
