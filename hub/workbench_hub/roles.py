"""Who may do what: the caller's identity, project roles and the effective-role rule."""

from dataclasses import dataclass, field
from enum import IntEnum

USE_SCOPE = "custom:workbench:use"
ADMIN_SCOPE = "custom:workbench:admin"
VISIBILITIES = ("private", "team", "public")


class Role(IntEnum):
    """Project roles, ordered so that a higher role can do everything a lower one can."""

    VIEWER = 1
    OPERATOR = 2
    CONTRIBUTOR = 3
    ADMIN = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def read_only(self) -> bool:
        """Sessions of viewers and operators get read-only project files."""
        return self < Role.CONTRIBUTOR

    @classmethod
    def parse(cls, value: str) -> "Role":
        """The role called `value` (``viewer``, ``operator``, ``contributor``, ``admin``)."""
        try:
            return cls[value.upper()]
        except KeyError:
            raise ValueError(f"role must be one of {ROLE_NAMES}, got {value!r}") from None


ROLE_NAMES = tuple(r.label for r in Role)


@dataclass(frozen=True)
class Identity:
    """The authenticated caller, from the JupyterHub user or service model."""

    name: str
    kind: str = "user"
    groups: frozenset[str] = field(default_factory=frozenset)
    scopes: frozenset[str] = field(default_factory=frozenset)

    @property
    def can_use(self) -> bool:
        return USE_SCOPE in self.scopes or self.is_admin

    @property
    def is_admin(self) -> bool:
        """Workbench admin: the token carries the admin scope (hub admins' tokens may)."""
        return ADMIN_SCOPE in self.scopes


@dataclass(frozen=True)
class Ownership:
    """What the effective-role rule needs to know about a project."""

    owner_kind: str
    owner_name: str
    visibility: str
    owner_groups: frozenset[str] = frozenset()


def effective_role(who: Identity, project: Ownership, collaborator: Role | None) -> Role | None:
    """The highest role `who` holds on `project`, or None if the project is hidden from them.

    `owner_groups` are the owner's groups for a user owner (the owning team is used for teams).
    """
    roles = []
    if who.is_admin or (project.owner_kind == "user" and project.owner_name == who.name):
        roles.append(Role.ADMIN)
    if project.owner_kind == "team" and project.owner_name in who.groups:
        roles.append(Role.CONTRIBUTOR)
    if collaborator is not None:
        roles.append(collaborator)
    if project.visibility == "public":
        roles.append(Role.VIEWER)
    elif project.visibility == "team":
        shared = {project.owner_name} if project.owner_kind == "team" else project.owner_groups
        if who.groups & shared:
            roles.append(Role.VIEWER)
    return max(roles, default=None)
