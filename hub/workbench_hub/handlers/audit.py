"""The audit log: events posted by the spawner, and the admins' query."""

from datetime import datetime

from workbench_hub import audit
from workbench_hub.handlers.base import APIError, APIHandler, Field


def _time_argument(handler: APIHandler, name: str) -> datetime | None:
    value = handler.get_query_argument(name, None)
    if value is None:
        return None
    try:
        # RFC 3339 date-times may write T and Z in lower case
        parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise APIError(
            400, f"{name} must be an ISO 8601 time with a UTC offset, got {value!r}", field=name
        )
    return parsed


class AuditHandler(APIHandler):
    service_allowed = True

    async def get(self):
        if not self.identity.is_admin:
            raise APIError(403, "reading the audit log needs custom:workbench:admin")
        filters = {
            key: self.get_query_argument(key, None)
            for key in ("actor", "action", "object_type", "object_id")
        }
        page = self.page()
        async with self.db.session() as session:
            events = await audit.query(
                session,
                **filters,
                since=_time_argument(self, "since"),
                until=_time_argument(self, "until"),
                limit=page.limit + 1,
                offset=page.offset,
            )
        self.write_page("events", [audit.to_json(e) for e in page.cut(events)], page)

    async def post(self):
        if not self.is_service:
            raise APIError(403, "only the workbench service itself may record audit events")
        body = self.json_body(
            {
                "actor": Field(str, min_length=1, max_length=255),
                "action": Field(str, min_length=1, max_length=64),
                "object_type": Field(str, min_length=1, max_length=64),
                "object_id": Field(str, min_length=1, max_length=255),
                "outcome": str,
                "detail": dict,
            },
            required=("actor", "action", "object_type", "object_id", "outcome"),
        )
        if body["outcome"] not in audit.OUTCOMES:
            raise APIError(400, f"outcome must be one of {list(audit.OUTCOMES)}", field="outcome")
        async with self.db.session() as session:
            event = audit.record(session, **body)
            await session.commit()
        self.write_json(audit.to_json(event), status=201)


handlers = [(r"audit", AuditHandler)]
