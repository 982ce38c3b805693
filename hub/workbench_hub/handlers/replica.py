"""Routes the replicas call: their model's valid access keys (long poll) and their counters."""

import orjson
from sqlalchemy import select

from workbench_hub.handlers.base import APIError
from workbench_hub.handlers.replica_base import ReplicaAPIHandler
from workbench_hub.orm import ModelAccessKey

#: longest a key poll waits for a change
MAX_WAIT_SECONDS = 60.0


class ReplicaKeysHandler(ReplicaAPIHandler):
    """``GET /deployments/{crn}/access-keys?version=V&wait=S``: hashes of the valid keys."""

    async def get(self, crn: str) -> None:
        supervisor = self.settings["models"]
        model_id = self.deployment.model_id
        try:
            version = int(self.get_argument("version", "-1"))
            wait = min(float(self.get_argument("wait", "0")), MAX_WAIT_SECONDS)
        except ValueError:
            raise APIError(400, "version and wait must be numbers") from None
        if wait > 0:
            await supervisor.wait_keys_changed(model_id, version, wait)
        current = supervisor.keys_version(model_id)
        async with self.db.session() as session:
            hashes = (
                await session.scalars(
                    select(ModelAccessKey.key_hash).where(
                        ModelAccessKey.model_id == model_id,
                        ModelAccessKey.revoked_at.is_(None),
                    )
                )
            ).all()
        self.write_json({"version": current, "hashes": sorted(hashes)})


class ReplicaStatsHandler(ReplicaAPIHandler):
    """``POST /deployments/{crn}/stats``: a replica's cumulative counters (docs/models.md)."""

    async def post(self, crn: str) -> None:
        try:
            body = orjson.loads(self.request.body)
        except orjson.JSONDecodeError:
            raise APIError(400, "body is not valid JSON") from None
        replica = body.get("replica") if isinstance(body, dict) else None
        stats = body.get("stats") if isinstance(body, dict) else None
        if not isinstance(replica, str) or not isinstance(stats, dict):
            raise APIError(400, 'body must be {"replica": name, "stats": {…}}')
        self.settings["models"].stats.record(self.deployment.id, replica, stats)
        self.set_status(204)
        self.finish()


handlers = [
    (r"deployments/(?P<crn>[^/]+)/access-keys", ReplicaKeysHandler),
    (r"deployments/(?P<crn>[^/]+)/stats", ReplicaStatsHandler),
]
