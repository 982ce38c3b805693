"""Password authentication for the embedded workbench.

Users and their scrypt password hashes live in one JSON file in the data directory, managed
with ``workbench users …``. In a cluster, configure any JupyterHub authenticator instead.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from jupyterhub.auth import Authenticator
from tornado import web
from traitlets import Unicode, default

from .isolation.config import Isolation
from .names import validate_name

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    """Return ``scrypt$<salt>$<hash>`` for a password."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    """Constant-time check of a password against a stored hash."""
    try:
        scheme, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), dklen=32, **_SCRYPT)
    return hmac.compare_digest(candidate, base64.b64decode(digest))


class UserStore:
    """The users file: ``{"users": {name: {"password": hash, "admin": bool}}}``."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> dict:
        if not self.path.exists():
            return {}
        return json.loads(self.path.read_text())["users"]

    def save(self, users: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"users": users}, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def set_password(self, name: str, password: str, admin: bool | None = None) -> None:
        """Create the user or change their password (and admin flag when given)."""
        validate_name(name)
        if len(password) < 8:
            raise ValueError("password must have at least 8 characters")
        users = self.load()
        entry = users.get(name, {"admin": False})
        entry["password"] = hash_password(password)
        if admin is not None:
            entry["admin"] = admin
        users[name] = entry
        self.save(users)

    def remove(self, name: str) -> bool:
        users = self.load()
        if users.pop(name, None) is None:
            return False
        self.save(users)
        return True


class WorkbenchAuthenticator(Authenticator):
    """Log in users listed in the workbench users file."""

    users_file = Unicode(
        help="""JSON file of users and scrypt password hashes, managed with `workbench users`.

        `workbench up` sets it to `<data dir>/users.json`.
        """,
    ).tag(config=True)

    only_user = Unicode(
        "",
        help="""When set, only this user may log in: `workbench up` sets it to the first
        administrator when users' code cannot be isolated from each other
        (docs/isolation.md, `c.WorkbenchUp.allow_shared_unix_user`).""",
    ).tag(config=True)

    @default("allow_all")
    def _allow_all_default(self):
        # Only users present in the users file can authenticate at all.
        return True

    async def delete_user(self, user):
        """The hub deleted `user`: forget their password and, with isolation, their unix
        account (docs/isolation.md)."""
        await asyncio.to_thread(UserStore(self.users_file).remove, user.name)
        isolation = Isolation(parent=self)
        if isolation.enabled:
            await asyncio.to_thread(isolation.accounts.remove_user, user.name)
        await super().delete_user(user)

    async def authenticate(self, handler, data):
        name = (data or {}).get("username", "")
        password = (data or {}).get("password", "")
        users = await asyncio.to_thread(UserStore(self.users_file).load)
        entry = users.get(name)
        if entry is None or not password:
            return None
        if self.only_user and name != self.only_user:
            handler.log.warning("Refused login of %s: isolation is off (docs/isolation.md)", name)
            raise web.HTTPError(
                403,
                "This workbench cannot keep users apart (no isolation), so only its "
                "administrator may log in. Ask them to read docs/isolation.md.",
            )
        ok = await asyncio.to_thread(check_password, password, entry["password"])
        if not ok:
            return None
        return {"name": name, "admin": bool(entry.get("admin"))}
