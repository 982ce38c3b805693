"""What a user may start a session with: their projects (with roles) and profiles."""

from sqlalchemy import select

from workbench_hub.handlers.base import APIError, APIHandler
from workbench_hub.orm import Collaborator, Project
from workbench_hub.profiles import profiles_for
from workbench_hub.roles import ADMIN_SCOPE, USE_SCOPE, Identity, Role, effective_role


class SpawnOptionsHandler(APIHandler):
    """For the user themselves, a workbench admin, or the service's own token (the spawner)."""

    service_allowed = True

    async def get(self, user):
        if not (self.is_service or self.identity.is_admin or self.identity.name == user):
            raise APIError(403, "you may only read your own spawn options")
        target = await self._target(user)
        async with self.db.session() as session:
            projects = (await session.scalars(select(Project).order_by(Project.name))).all()
            collaborations = dict(
                (
                    await session.execute(
                        select(Collaborator.project_id, Collaborator.role).where(
                            Collaborator.user_name == user
                        )
                    )
                ).all()
            )
        options = []
        for project in projects:
            collaborator = collaborations.get(project.id)
            role = effective_role(
                target,
                await self.ownership(project),
                Role.parse(collaborator) if collaborator else None,
            )
            if role is not None:
                options.append(
                    {
                        "name": project.name,
                        "role": role.label,
                        "path": str(self.service.project_path(project.name)),
                        "read_only": role.read_only,
                    }
                )
        profiles = profiles_for(self.service.resource_profiles, target.groups)
        self.write_json({"projects": options, "profiles": profiles})

    async def _target(self, user: str) -> Identity:
        """The identity of `user` as the effective-role rule sees it: a workbench admin if a
        role of theirs grants the admin scope (`WorkbenchService.admin_roles`)."""
        if user == self.identity.name and not self.is_service:
            return self.identity
        model = await self.hub.get_user(user)
        if model is None:
            raise APIError(404, f"no such user {user!r} in the hub", field="user")
        scopes = {USE_SCOPE}
        if set(model.get("roles") or ()) & self.service.admin_roles:
            scopes.add(ADMIN_SCOPE)
        return Identity(
            name=user, groups=frozenset(model.get("groups") or ()), scopes=frozenset(scopes)
        )


handlers = [(r"users/(?P<user>[^/]+)/spawn-options", SpawnOptionsHandler)]
