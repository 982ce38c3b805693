"""Project collaborators: list, add or change a role, remove."""

import re

from sqlalchemy import select

from workbench_hub import audit
from workbench_hub.handlers.base import APIError, APIHandler
from workbench_hub.hubapi import HubAPIError
from workbench_hub.orm import Collaborator
from workbench_hub.roles import ROLE_NAMES, Role


class CollaboratorListHandler(APIHandler):
    async def get(self, name):
        async with self.db.session() as session:
            project, _ = await self.project_for(session, name, Role.VIEWER, "viewing")
            rows = await session.scalars(
                select(Collaborator)
                .where(Collaborator.project_id == project.id)
                .order_by(Collaborator.user_name)
            )
            collaborators = [{"user": c.user_name, "role": c.role} for c in rows]
        self.write_json({"collaborators": collaborators})


class CollaboratorHandler(APIHandler):
    async def put(self, name, user):
        body = self.json_body({"role": str}, required=("role",))
        if body["role"] not in ROLE_NAMES:
            raise APIError(400, f"role must be one of {list(ROLE_NAMES)}", field="role")
        async with self.db.session() as session:
            project, _ = await self.project_for(session, name, Role.ADMIN, "managing collaborators")
            if await self.hub.get_user(user) is None:
                await self._create_hub_user(user)
            collaborator = await session.scalar(
                select(Collaborator).where(
                    Collaborator.project_id == project.id, Collaborator.user_name == user
                )
            )
            previous = collaborator.role if collaborator else None
            if collaborator is None:
                collaborator = Collaborator(project_id=project.id, user_name=user)
                session.add(collaborator)
            collaborator.role = body["role"]
            if previous != body["role"]:
                audit.record(
                    session,
                    actor=self.identity.name,
                    action="collaborator.added" if previous is None else "collaborator.changed",
                    object_type="project",
                    object_id=name,
                    detail={"user": user, "role": body["role"], "previous_role": previous},
                )
            await session.commit()
        self.projects_changed()
        self.write_json({"user": user, "role": body["role"]})

    async def _create_hub_user(self, user: str) -> None:
        """Share with someone who has not logged in yet: create their hub user, so they see
        the project once they log in (with a password from ``workbench users add``)."""
        if not valid_hub_user_name(user):
            raise APIError(400, f"{user!r} is not a valid hub user name", field="user")
        try:
            await self.hub.ensure_user(user)
        except HubAPIError as e:
            if e.status != 400:
                raise
            raise APIError(400, f"the hub refused the user name {user!r}", field="user") from None

    async def delete(self, name, user):
        async with self.db.session() as session:
            project, _ = await self.project_for(session, name, Role.ADMIN, "managing collaborators")
            collaborator = await session.scalar(
                select(Collaborator).where(
                    Collaborator.project_id == project.id, Collaborator.user_name == user
                )
            )
            if collaborator is None:
                raise APIError(404, f"{user!r} is not a collaborator on {name!r}", field="user")
            await session.delete(collaborator)
            audit.record(
                session,
                actor=self.identity.name,
                action="collaborator.removed",
                object_type="project",
                object_id=name,
                detail={"user": user, "previous_role": collaborator.role},
            )
            await self.revoke_project_access(name, user)
            await session.commit()
        self.projects_changed()
        self.set_status(204)
        self.finish()


#: a hub user the workbench may create: what people log in as here (openapi.yaml says it)
NEW_HUB_USER = re.compile(r"[a-z0-9_@+-][a-z0-9._@+-]{0,254}")


def valid_hub_user_name(name: str) -> bool:
    """Whether the workbench may create hub user `name` (lower case, no `/` or space, not
    starting with a dot: JupyterHub's logins are normalized to lower case)."""
    return NEW_HUB_USER.fullmatch(name) is not None


handlers = [
    (r"projects/(?P<name>[^/]+)/collaborators", CollaboratorListHandler),
    (r"projects/(?P<name>[^/]+)/collaborators/(?P<user>[^/]+)", CollaboratorHandler),
]
