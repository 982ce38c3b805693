"""Sessions of a project: the JupyterHub named servers ``<user>/<project>``."""

from workbench_hub.handlers.base import APIHandler
from workbench_hub.roles import Role


def session_json(user: str, server: dict) -> dict:
    return {
        "user": user,
        "name": server["name"],
        "ready": bool(server.get("ready")),
        "pending": server.get("pending"),
        "url": server.get("url"),
        "started": server.get("started"),
        "last_activity": server.get("last_activity"),
    }


class SessionListHandler(APIHandler):
    async def get(self, name):
        async with self.db.session() as session:
            await self.project_for(session, name, Role.VIEWER, "viewing")
        sessions = [
            session_json(user["name"], user["servers"][name])
            for user in await self.hub.list_users(state="active")
            if name in (user.get("servers") or {})
        ]
        sessions.sort(key=lambda s: s["user"])
        self.write_json({"sessions": sessions})


handlers = [(r"projects/(?P<name>[^/]+)/sessions", SessionListHandler)]
