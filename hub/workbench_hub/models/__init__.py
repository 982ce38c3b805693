"""Models: builds, deployments, replicas, access keys and model metrics (docs/models.md)."""

import hashlib
import secrets
import uuid

#: states of a build
BUILD_STATES = ("queued", "building", "succeeded", "failed")
#: states of a deployment; the first two are *active* (replicas wanted)
DEPLOYMENT_STATES = ("deploying", "running", "superseded", "stopped", "failed")
ACTIVE_DEPLOYMENT_STATES = ("deploying", "running")

ACCESS_KEY_PREFIX = "wbk_"


def new_crn(kind: str) -> str:
    """A stable identifier of a model, build or deployment, used where Cloudera uses a CRN."""
    return f"crn:workbench:{kind}:{uuid.uuid4()}"


def new_secret(prefix: str = "") -> str:
    """A random secret (access key or replica token); store only :func:`secret_hash`."""
    return prefix + secrets.token_urlsafe(24)


def secret_hash(secret: str) -> str:
    """SHA-256 of a high-entropy secret, as stored and compared (hex)."""
    return hashlib.sha256(secret.encode()).hexdigest()
