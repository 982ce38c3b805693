"""The one base handler: authentication, JSON bodies, JSON errors and project access."""

import json
import math
import os
import re
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qsl, urlencode

from jupyterhub.services.auth import HubOAuthenticated, UserNotAllowed
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from tornado import web

from workbench_hub import audit
from workbench_hub.hubapi import HubAPIError
from workbench_hub.jobs.validation import MAX_INT
from workbench_hub.orm import Collaborator, Project
from workbench_hub.roles import Identity, Ownership, Role, effective_role

# Limits of request bodies (docs/architecture.md, "Limits"; openapi.yaml states them per field)
#: deepest nesting of arrays and objects in a body, the body itself counting as one
MAX_DEPTH = 32
#: longest string anywhere in a body (keys included)
MAX_STRING = 65_536
#: longest string a body field may hold unless its `Field` says otherwise
MAX_TEXT = 4_000
#: the integers a body field may hold unless its `Field` says otherwise
MIN_INT64, MAX_INT64 = -(2**63), 2**63 - 1
#: the largest `limit` of a list endpoint (docs/architecture.md, "Pagination")
MAX_PAGE = 1000
_DIGITS = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True)
class Field:
    """A body field of `APIHandler.json_body`: its JSON type(s), the length of a string (which
    never holds NUL: fields land in text columns), the range of an integer (JSON Schema's
    integers: ``11.0`` is the integer 11; default signed 64-bit)."""

    types: type | tuple[type, ...]
    min_length: int = 0
    max_length: int = MAX_TEXT
    between: tuple[int, int] | None = None


class APIError(web.HTTPError):
    """An error answered as ``{"status", "message", "field"?}``."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(status, message)
        self.message = message
        self.field = field


class Page:
    """The slice of a list a request asked for with ``limit`` and ``offset``.

    Offsets, as in JupyterHub's REST API, rather than cursors: every list is ordered by a
    unique key (a name, a number, an id), so a page never repeats or skips an item while the
    list stands still; a concurrent insert before the offset shifts the following pages by
    one, which a caller reading a changing list must accept from either scheme. `more` tells,
    after `scalars` or `cut`, whether another page follows: each page reads one row past its
    end to know.
    """

    def __init__(self, limit: int, offset: int) -> None:
        self.limit, self.offset, self.more = limit, offset, False

    async def scalars(self, session, statement) -> list:
        """This page of `statement`'s objects, read with LIMIT/OFFSET."""
        statement = statement.limit(self.limit + 1).offset(self.offset)
        return self.cut(list((await session.scalars(statement)).all()))

    def cut(self, rows: list) -> list:
        """`rows` (this page and at most one row more) without the row past the page."""
        self.more = len(rows) > self.limit
        return rows[: self.limit]


class APIHandler(HubOAuthenticated, web.RequestHandler):
    """Base of every control plane handler.

    Identifies the caller through JupyterHub (token header or OAuth cookie, whose non-GET
    requests must pass the hub's XSRF check), answers 401/403 as JSON instead of redirecting,
    and requires ``custom:workbench:use``. Routes that the service's own token may call set
    `service_allowed`; routes only it may call set `service_only`.
    """

    service_allowed = False
    service_only = False

    @property
    def hub_auth(self):
        return self.settings["hub_auth"]

    @property
    def service(self):
        return self.settings["service"]

    @property
    def db(self):
        return self.settings["db"]

    @property
    def hub(self):
        return self.settings["hub"]

    def get_login_url(self):
        raise APIError(401, "authentication required")

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")

    def compute_etag(self) -> None:
        """No ETags: answers are never cached (no-store), so hashing each body is waste."""
        return None

    async def prepare(self) -> None:
        model = await self.hub_auth.get_user(self, sync=False)
        if not model:
            raise APIError(
                401,
                "authentication required: send 'Authorization: token <JupyterHub API token>'"
                " or log in through the hub",
            )
        try:
            model = self.check_hub_user(model)
        except UserNotAllowed:
            raise APIError(403, "this token may not access the workbench service") from None
        self.current_user = model
        self.identity = await self._identity(model)
        if self.is_service:
            if not (self.service_allowed or self.service_only):
                raise APIError(403, "the service token may not call this route")
        elif self.service_only:
            raise APIError(403, "only the workbench service itself may call this route")
        elif not self.identity.can_use:
            raise APIError(403, "this token lacks the scope custom:workbench:use")

    async def _identity(self, model: dict) -> Identity:
        kind = model.get("kind", "user")
        groups = model.get("groups")
        if groups is None and kind == "user":
            groups = await self.hub.user_groups(model["name"]) or ()
        return Identity(
            name=model["name"],
            kind=kind,
            groups=frozenset(groups or ()),
            scopes=frozenset(model.get("scopes") or ()),
        )

    @property
    def is_service(self) -> bool:
        return self.identity.kind == "service" and self.identity.name == self.service.service_name

    # request bodies

    def json_body(
        self, fields: dict[str, type | tuple | Field], required: tuple[str, ...] = ()
    ) -> dict:
        """The JSON object body, checked against `fields` (name → allowed type(s) or `Field`)
        and `parse_json`'s limits."""
        body = _load_json(self.request.body)
        if not isinstance(body, dict):
            raise APIError(400, "body must be a JSON object")
        for key in body:
            if key not in fields:
                raise APIError(400, f"unknown field {key!r}", field=key)
        for key in required:
            if key not in body:
                raise APIError(400, f"missing required field {key!r}", field=key)
        body = {key: _field_value(key, value, fields[key]) for key, value in body.items()}
        _check_storable(body)
        return body

    def allowed_methods(self) -> list[str]:
        """The HTTP methods this handler implements, for ``Allow``."""
        own, unimplemented = type(self), web.RequestHandler
        return [
            method
            for method in self.SUPPORTED_METHODS
            if getattr(own, method.lower()) is not getattr(unimplemented, method.lower())
        ]

    # projects and roles

    async def project_for(
        self, session, name: str, need: Role, action: str
    ) -> tuple[Project, Role]:
        """Project `name` and the caller's role: 404 if hidden from them, 403 if too low."""
        project = await session.scalar(select(Project).where(Project.name == name))
        role = None if project is None else await self.role_on(session, project)
        if role is None:
            raise APIError(404, f"no project {name!r}")
        if role < need:
            await self.audit_denied(action, "project", name, {"role": role.label})
            raise APIError(
                403,
                f"your role on project {name!r} is {role.label}; {action} needs {need.label}",
            )
        return project, role

    async def project_item(
        self, session, project_name: str, table, name: str, need: Role, action: str
    ) -> tuple[Project, object, Role]:
        """A named object of a project (a Job, a Model…) and the caller's role on the project.

        404 if the project is hidden or the object missing, 403 (audited) if the role is too low.
        """
        project, role = await self.project_for(session, project_name, Role.VIEWER, "viewing")
        item = await session.scalar(
            select(table).where(table.project_id == project.id, table.name == name)
        )
        kind = table.__name__.lower()
        if item is None:
            raise APIError(404, f"no {kind} {name!r} in project {project_name!r}")
        if role < need:
            await self.audit_denied(action, kind, f"{project_name}/{name}", {"role": role.label})
            raise APIError(
                403,
                f"your role on project {project_name!r} is {role.label}; {action} needs"
                f" {need.label}",
            )
        return project, item, role

    async def project_listing(self) -> tuple[list[dict], str]:
        """The projects the caller has a role on, as JSON objects and as the list's body."""

        async def compute():
            projects = await self._visible_projects()
            return projects, json.dumps({"projects": projects})

        return await self.settings["listing_cache"].get(self.identity, compute)

    def projects_changed(self) -> None:
        """Call after committing a change to projects or collaborators."""
        self.settings["listing_cache"].clear()

    async def revoke_project_access(self, project: str, user: str | None = None) -> None:
        """Take ``user``'s (None: everyone's) access to ``project``'s files away in the runtime
        (Kubernetes: project volumes) before the database forgets it; 503 if it cannot."""
        try:
            await self.service.runtime.project_access_removed(project, user)
        except Exception as e:
            self.log.error("Could not revoke access to %s (%s): %s", project, user or "all", e)
            raise APIError(
                503, f"could not remove access to the files of {project!r}: try again"
            ) from None

    async def _visible_projects(self) -> list[dict]:
        async with self.db.session() as session:
            # plain rows, not ORM objects: this is the hottest read of the API
            rows = await session.execute(
                select(*Project.__table__.columns, Collaborator.role)
                .outerjoin(
                    Collaborator,
                    (Collaborator.project_id == Project.id)
                    & (Collaborator.user_name == self.identity.name),
                )
                .order_by(Project.name)
            )
        visible = []
        for project in rows:
            role_name = project.role
            role = effective_role(
                self.identity,
                await self.ownership(project),
                Role.parse(role_name) if role_name else None,
            )
            if role is not None:
                visible.append(self.project_json(project, role))
        return visible

    async def role_on(self, session, project: Project) -> Role | None:
        collaborator = await session.scalar(
            select(Collaborator.role).where(
                Collaborator.project_id == project.id,
                Collaborator.user_name == self.identity.name,
            )
        )
        return effective_role(
            self.identity,
            await self.ownership(project),
            Role.parse(collaborator) if collaborator else None,
        )

    async def ownership(self, project: Project) -> Ownership:
        owner_groups = frozenset()
        if project.visibility == "team" and project.owner_kind == "user":
            owner_groups = await self.hub.user_groups(project.owner_name) or frozenset()
        return Ownership(project.owner_kind, project.owner_name, project.visibility, owner_groups)

    def project_json(self, project: Project, role: Role) -> dict:
        return {
            "name": project.name,
            "description": project.description,
            "owner": {"kind": project.owner_kind, "name": project.owner_name},
            "visibility": project.visibility,
            "created": project.created.isoformat(),
            "updated": project.updated.isoformat(),
            "role": role.label,
            # names in the database are validated labels: a plain join (no resolve per row)
            "path": os.path.join(self.service.project_root, project.name),
        }

    # audit

    async def audit_denied(self, action: str, object_type: str, object_id: str, detail=None):
        """Record a forbidden attempt in its own transaction (the request's is rolled back)."""
        async with self.db.session() as session:
            audit.record(
                session,
                actor=self.identity.name,
                action=action,
                object_type=object_type,
                object_id=object_id,
                outcome="denied",
                detail=detail,
            )
            await session.commit()

    # lists

    def page(self) -> Page:
        """The page that ``limit`` (1 to `MAX_PAGE`, default `WorkbenchService.page_size`)
        and ``offset`` (default 0) ask for; 400 naming the argument for a bad value."""
        limit = self._page_argument("limit", self.service.page_size, 1, MAX_PAGE)
        return Page(limit, self._page_argument("offset", 0, 0, MAX_INT64))

    def _page_argument(self, name: str, default: int, low: int, high: int) -> int:
        text = self.get_query_argument(name, None)
        if text is None:
            return default
        if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
            raise APIError(400, f"{name} must be an integer from {low} to {high}", field=name)
        return int(text)

    def write_page(self, key: str, items: list, page: Page) -> None:
        """Answer ``{key: items, "next": …}``: `next` is null on the last page, else the
        ``offset``, ``limit`` and ``url`` (this request's, with the next offset) of the next."""
        following = None
        if page.more:
            offset = page.offset + page.limit
            query = dict(parse_qsl(self.request.query, keep_blank_values=True))
            query.update(offset=str(offset), limit=str(page.limit))
            following = {
                "offset": offset,
                "limit": page.limit,
                "url": f"{self.request.path}?{urlencode(query)}",
            }
        self.write_json({key: items, "next": following})

    # responses

    def write_json(self, data: dict, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, APIError) and value.status_code < 500:
            self.service.log.debug(
                "%s %s: %s", self.request.method, self.request.path, value.message
            )
        elif isinstance(value, IntegrityError):
            self.service.log.info(
                "%s %s: conflict: %s", self.request.method, self.request.path, value.orig
            )
        else:
            super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        field = None
        if isinstance(exc, APIError):
            message, field = exc.message, exc.field
        elif isinstance(exc, IntegrityError):
            status_code, message = 409, "conflicts with an existing object"
            self.set_status(409)
        elif isinstance(exc, HubAPIError):
            status_code, message = 502, str(exc)
            self.set_status(502)
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message or exc.reason or HTTPStatus(status_code).phrase
            if exc.args[1:]:
                message = message % exc.args[1:]
        elif exc is not None:
            message = "internal error; the details are in the workbench service log"
        else:
            message = self._reason
        body = {"status": status_code, "message": message}
        if field is not None:
            body["field"] = field
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(body))


_JSON_TYPE_NAMES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    dict: "an object",
    list: "a list",
    type(None): "null",
}


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def parse_json(body: bytes) -> object:
    """A request body's JSON value (none: ``{}``); 400 for what the API's stores cannot
    hold: nesting deeper than `MAX_DEPTH`, NaN and infinities, strings longer than
    `MAX_STRING` or with an unpaired surrogate."""
    value = _load_json(body)
    _check_storable(value)
    return value


def _load_json(body: bytes) -> object:
    try:
        return json.loads(body or b"{}", parse_int=_parse_int)
    except RecursionError:
        raise APIError(400, f"body nests deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError):
        raise APIError(400, "body is not valid JSON") from None


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        raise APIError(400, f"body holds an integer of {len(text)} digits") from None


def _check_storable(value) -> None:
    if not isinstance(value, dict):
        problem = _problem(value, 1)
        if problem:
            raise APIError(400, f"body {problem}")
        return
    for key, item in value.items():
        problem = _problem(key, 1) or _problem(item, 2)
        if problem:
            raise APIError(400, f"field {key!r} {problem}", field=key)


def _problem(value, depth: int) -> str | None:
    """Why `value`, found at nesting `depth`, cannot be stored; None if it can."""
    stack = [(value, depth)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                return f"nests deeper than {MAX_DEPTH} levels"
            children = [*item, *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, str):
            if len(item) > MAX_STRING:
                return f"holds a string longer than {MAX_STRING} characters"
            if _has_surrogate(item):
                return "holds a string with an unpaired surrogate"
        elif isinstance(item, float) and not math.isfinite(item):
            return "holds a number JSON cannot represent"
    return None


def _has_surrogate(text: str) -> bool:
    """Whether `text` holds a lone surrogate (JSON's ``"\\ud800"``), which UTF-8 cannot."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _field_value(key: str, value, spec: type | tuple | Field):
    """`value` of body field `key` checked against `spec` (400 naming the field)."""
    spec = spec if isinstance(spec, Field) else Field(spec)
    types = _as_tuple(spec.types)
    if int in types and isinstance(value, float) and value.is_integer():
        value = int(value)
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        names = " or ".join(_JSON_TYPE_NAMES[t] for t in types)
        raise APIError(400, f"field {key!r} must be {names}", field=key)
    if isinstance(value, str):
        if not spec.min_length <= len(value) <= spec.max_length:
            at_least = f"{spec.min_length} to " if spec.min_length else "at most "
            raise APIError(
                400, f"field {key!r} must be {at_least}{spec.max_length} characters long", key
            )
        if "\x00" in value:
            raise APIError(400, f"field {key!r} must not contain NUL characters", field=key)
    if isinstance(value, int) and not isinstance(value, bool):
        low, high = spec.between or (MIN_INT64, MAX_INT64)
        if not low <= value <= high:
            what = f"an integer from {low} to {high}" if spec.between else "a 64-bit integer"
            raise APIError(400, f"field {key!r} must be {what}", field=key)
    return value


def path_number(text: str) -> int:
    """A number from the URL (``[0-9]+``: a run, build, deployment or key id) for a query;
    0, which no row has (they count from 1), when it is beyond an Integer column."""
    digits = text.lstrip("0")
    return int(digits) if digits and len(digits) <= 10 and int(digits) <= MAX_INT else 0


class NotFoundHandler(APIHandler):
    """Unknown paths under the API prefix: a JSON 404 (after authentication)."""

    async def prepare(self) -> None:
        await super().prepare()
        raise APIError(404, f"no route {self.request.path}")
