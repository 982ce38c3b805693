"""The audit log: who did what to which object, when, and whether it worked."""

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from workbench_hub.orm import AuditEvent, utcnow

OUTCOMES = ("success", "failure", "denied")


def record(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    object_type: str,
    object_id: str,
    outcome: str = "success",
    detail: dict | None = None,
) -> AuditEvent:
    """Add an event to `session`; it is written with the change it describes, on commit."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    event = AuditEvent(
        time=utcnow(),
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=object_id,
        outcome=outcome,
        detail=detail or {},
    )
    session.add(event)
    return event


async def query(
    session: AsyncSession,
    *,
    actor: str | None = None,
    action: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[AuditEvent]:
    """Events matching every given filter, newest first, `offset` skipped, at most `limit`."""
    statement = select(AuditEvent)
    for column, value in (
        (AuditEvent.actor, actor),
        (AuditEvent.action, action),
        (AuditEvent.object_type, object_type),
        (AuditEvent.object_id, object_id),
    ):
        if value is not None:
            statement = statement.where(column == value)
    if since is not None:
        statement = statement.where(AuditEvent.time >= since)
    if until is not None:
        statement = statement.where(AuditEvent.time <= until)
    statement = statement.order_by(AuditEvent.time.desc(), AuditEvent.id.desc())
    statement = statement.limit(limit).offset(offset)
    return list((await session.scalars(statement)).all())


def to_json(event: AuditEvent) -> dict:
    return {
        "id": event.id,
        "time": event.time.isoformat(),
        "actor": event.actor,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "outcome": event.outcome,
        "detail": event.detail,
    }
