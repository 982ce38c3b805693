"""Base of the routes that model replicas call, authenticated by their deployment's token."""

import hmac

from sqlalchemy import select

from workbench_hub.handlers.base import APIError, APIHandler
from workbench_hub.models import secret_hash
from workbench_hub.orm import ModelDeployment


class ReplicaAPIHandler(APIHandler):
    """Routes ``/deployments/{crn}/…`` called by a deployment's replicas.

    The caller sends ``Authorization: Bearer <deployment token>``; the token was given to the
    replicas when they started and only its SHA-256 is stored. A wrong or missing token is
    401. Hub tokens are not accepted here.
    """

    deployment: ModelDeployment

    async def prepare(self) -> None:
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(401, "authentication required: send the deployment's bearer token")
        crn = self.path_kwargs.get("crn", "")
        async with self.db.session() as session:
            deployment = await session.scalar(
                select(ModelDeployment).where(ModelDeployment.crn == crn)
            )
        if deployment is None or not hmac.compare_digest(
            deployment.token_hash, secret_hash(token.strip())
        ):
            raise APIError(401, "invalid deployment token")
        self.deployment = deployment
