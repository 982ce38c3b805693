"""Access keys of a model: list, create, revoke, rotate; resolving a key to its model.

A key is shown once, when created; only its SHA-256 is stored. Revoking wakes the replicas'
long polls (``/deployments/{crn}/access-keys``) so the key stops working at once.
"""

from sqlalchemy import select

from workbench_hub.handlers.base import APIError, parse_json, path_number
from workbench_hub.handlers.models import MODEL_ROUTE, ModelsAPIHandler
from workbench_hub.models import ACCESS_KEY_PREFIX, new_secret, secret_hash
from workbench_hub.orm import Model, ModelAccessKey, Project, utcnow
from workbench_hub.roles import Role

PREFIX_LENGTH = 10


def key_json(key: ModelAccessKey) -> dict:
    return {
        "id": key.id,
        "prefix": key.prefix,
        "description": key.description,
        "created": key.created.isoformat(),
        "created_by": key.created_by,
        "revoked": key.revoked_at is not None,
    }


class KeysAPIHandler(ModelsAPIHandler):
    def new_key(self, session, model: Model, description: str) -> tuple[ModelAccessKey, str]:
        secret = new_secret(ACCESS_KEY_PREFIX)
        key = ModelAccessKey(
            model_id=model.id,
            prefix=secret[:PREFIX_LENGTH],
            key_hash=secret_hash(secret),
            description=description,
            created_by=self.identity.name,
        )
        session.add(key)
        return key, secret

    async def key_for(self, session, model: Model, key_id: str) -> ModelAccessKey:
        key = await session.scalar(
            select(ModelAccessKey).where(
                ModelAccessKey.model_id == model.id, ModelAccessKey.id == path_number(key_id)
            )
        )
        if key is None:
            raise APIError(404, f"model {model.name!r} has no access key {key_id}")
        return key


class KeyListHandler(KeysAPIHandler):
    async def get(self, project_name: str, model_name: str) -> None:
        async with self.db.session() as session:
            _, model, _ = await self.model_for(
                session, project_name, model_name, Role.VIEWER, "viewing"
            )
            keys = (
                await session.scalars(
                    select(ModelAccessKey)
                    .where(ModelAccessKey.model_id == model.id)
                    .order_by(ModelAccessKey.id)
                )
            ).all()
        self.write_json({"keys": [key_json(k) for k in keys]})

    async def post(self, project_name: str, model_name: str) -> None:
        description = self.json_body({"description": str}).get("description", "")
        async with self.db.session() as session:
            project, model, _ = await self.model_for(
                session, project_name, model_name, Role.CONTRIBUTOR, "creating an access key"
            )
            key, secret = self.new_key(session, model, description)
            await session.flush()
            self.record(session, "model.key.created", project.name, model.name, {"key": key.id})
            await session.commit()
        self.supervisor.keys_changed(model.id)
        self.write_json({**key_json(key), "key": secret}, 201)


class KeyHandler(KeysAPIHandler):
    async def delete(self, project_name: str, model_name: str, key_id: str) -> None:
        async with self.db.session() as session:
            project, model, _ = await self.model_for(
                session, project_name, model_name, Role.CONTRIBUTOR, "revoking an access key"
            )
            key = await self.key_for(session, model, key_id)
            if key.revoked_at is None:
                key.revoked_at = utcnow()
                self.record(session, "model.key.revoked", project.name, model.name, {"key": key.id})
                await session.commit()
        self.supervisor.keys_changed(model.id)
        self.set_status(204)
        self.finish()


class KeyRotateHandler(KeysAPIHandler):
    async def post(self, project_name: str, model_name: str, key_id: str) -> None:
        self.json_body({})
        async with self.db.session() as session:
            project, model, _ = await self.model_for(
                session, project_name, model_name, Role.CONTRIBUTOR, "rotating an access key"
            )
            old = await self.key_for(session, model, key_id)
            if old.revoked_at is not None:
                raise APIError(409, f"access key {old.id} is revoked; create a new key instead")
            old.revoked_at = utcnow()
            key, secret = self.new_key(session, model, old.description)
            await session.flush()
            self.record(
                session,
                "model.key.rotated",
                project.name,
                model.name,
                {"key": old.id, "new_key": key.id},
            )
            await session.commit()
        self.supervisor.keys_changed(model.id)
        self.write_json({**key_json(key), "key": secret}, 201)


class ResolveKeyHandler(ModelsAPIHandler):
    """``POST /access-keys/resolve``: the URL of the model a key calls (the key is the credential).

    Used by ``call_model(access_key, payload)``. Unknown and revoked keys get 401.
    """

    async def prepare(self) -> None:
        """No hub token here: the access key in the body authenticates the caller."""
        body = parse_json(self.request.body)
        secret = body.get("accessKey") if isinstance(body, dict) else None
        if not isinstance(secret, str) or not secret:
            raise APIError(401, "authentication required: send the model's accessKey")
        async with self.db.session() as session:
            self.resolved = (
                await session.execute(
                    select(Project.name, Model.name)
                    .join(Model, Model.project_id == Project.id)
                    .join(ModelAccessKey, ModelAccessKey.model_id == Model.id)
                    .where(
                        ModelAccessKey.key_hash == secret_hash(secret),
                        ModelAccessKey.revoked_at.is_(None),
                    )
                )
            ).first()
        if self.resolved is None:
            raise APIError(401, "invalid access key")

    async def post(self) -> None:
        project, model = self.resolved
        self.write_json({"project": project, "model": model, "url": self.model_url(project, model)})


handlers = [
    (MODEL_ROUTE + r"/keys", KeyListHandler),
    (MODEL_ROUTE + r"/keys/(?P<id>[0-9]+)", KeyHandler),
    (MODEL_ROUTE + r"/keys/(?P<id>[0-9]+)/rotate", KeyRotateHandler),
    (r"access-keys/resolve", ResolveKeyHandler),
]
