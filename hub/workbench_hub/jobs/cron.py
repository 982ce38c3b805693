"""Cron instants in a time zone, correct across daylight-saving changes.

A 5-field expression describes *wall-clock* times in the job's IANA time zone. Candidates are
computed on the naive local calendar (croniter) and mapped to UTC with :mod:`zoneinfo`:

* a wall time that does not exist (spring forward, e.g. 02:30 on 2026-03-29 in Europe/Berlin)
  fires once, shifted forward by the length of the gap (03:30 CEST);
* a wall time that happens twice (fall back, e.g. 02:30 on 2026-10-25 in Europe/Berlin) fires
  once, at its first occurrence (02:30 CEST), unless the expression fires in *every* hour
  (hour field ``*``): then it fires at both occurrences, so an hourly job runs every real hour;
* instants are strictly increasing: a shifted instant that coincides with a real one fires once.
"""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import croniter

# Local wall time and real time differ by at most this much around a transition, so candidates
# this far before `after` (in local time) are enough to find the next instant.
_MARGIN = timedelta(hours=3)
_MAX_CANDIDATES = 10_000


class InvalidCron(ValueError):
    """A cron expression or time zone that cannot be used."""


@lru_cache(maxsize=256)
def _parse(expression: str) -> tuple[str, bool]:
    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise InvalidCron(f"{expression!r} is not a 5-field cron expression")
    hours = croniter(expression).expanded[1]
    return expression, hours == ["*"] or len(hours) == 24


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError) as e:  # ZoneInfoNotFoundError is a KeyError
        raise InvalidCron(f"unknown time zone {name!r}") from e


def _instants(local: datetime, zone: ZoneInfo, every_hour: bool) -> list[datetime]:
    """The UTC instants a naive local wall time stands for (see the module docstring)."""
    first = local.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = local.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if second > first and every_hour:  # a repeated wall time (fall back)
        return [first, second]
    # a gap (spring forward) gives second < first with fold=0 shifted forward: keep fold=0
    return [first]


def next_tick(expression: str, timezone: str, after: datetime) -> datetime:
    """The first instant of ``expression`` in ``timezone`` strictly after ``after``, in UTC."""
    if after.tzinfo is None:
        raise ValueError("after must be an aware datetime")
    expression, every_hour = _parse(expression)
    zone = _zone(timezone)
    after = after.astimezone(UTC)
    start = after.astimezone(zone).replace(tzinfo=None, fold=0) - _MARGIN
    candidates = croniter(expression, start)
    best: datetime | None = None
    for _ in range(_MAX_CANDIDATES):
        local = candidates.get_next(datetime)
        for instant in _instants(local, zone, every_hour):
            if instant > after and (best is None or instant < best):
                best = instant
        # local → UTC is monotonic except within a transition (≤ _MARGIN), so once a
        # candidate lies well past the best instant nothing earlier can follow
        if best is not None and local.replace(tzinfo=zone).astimezone(UTC) > best + _MARGIN:
            return best
    if best is None:
        raise InvalidCron(f"{expression!r} never fires")
    return best


def ticks(expression: str, timezone: str, after: datetime, until: datetime) -> Iterator[datetime]:
    """Every instant of ``expression`` in ``(after, until]``, oldest first."""
    instant = next_tick(expression, timezone, after)
    while instant <= until:
        yield instant
        instant = next_tick(expression, timezone, instant)


def validate(expression: str, timezone: str) -> None:
    """Raise :class:`InvalidCron` unless the expression and time zone can be scheduled."""
    _parse(expression)
    _zone(timezone)
