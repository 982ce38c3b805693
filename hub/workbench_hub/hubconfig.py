"""JupyterHub configuration of the workbench, applied by the generated ``jupyterhub_config.py``."""

import sys
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from workbench_hub import redact

SERVICE_NAME = "workbench"
PROXY_STREAM_TIMEOUT_MS = 6 * 3600 * 1000
#: the hub role granting custom:workbench:admin, held by every hub admin (follow_hub_admins)
ADMIN_ROLE = "workbench-admin"
#: seconds a session trusts the hub's answer about a token (the control plane's default of
#: WorkbenchService.auth_cache_seconds): revoked and expired tokens stop working within it
SESSION_AUTH_CACHE_SECONDS = 5
#: our hub pages (home.html, spawn.html, not_running.html), extending JupyterHub's
HUB_TEMPLATES = Path(__file__).parent / "hub_templates"

CUSTOM_SCOPES = {
    "custom:workbench:use": {
        "description": "Use Jupyter Workbench: see projects, create projects, act by project role.",
    },
    "custom:workbench:admin": {
        "description": "Administer Jupyter Workbench: every project, the audit log.",
        "subscopes": ["custom:workbench:use"],
    },
}


def follow_hub_admins() -> None:
    """Keep every hub admin, and only them, in the role `ADMIN_ROLE`, from now on.

    JupyterHub refuses extra scopes on its built-in `admin` role, so custom:workbench:admin
    comes from a role of our own. All the ways to become or stop being a hub admin (admin_users,
    the authenticator's answer at login, ``PATCH /hub/api/users/{name}``) set `User.admin`;
    before each flush of the hub's database the role follows that flag, and when load_roles
    reset the role's members at start, every admin is put back.
    """
    if not event.contains(Session, "before_flush", _admins_follow):
        event.listen(Session, "before_flush", _admins_follow)


def _admins_follow(session: Session, flush_context, instances) -> None:
    from jupyterhub import orm

    users = [
        obj
        for obj in (*session.new, *session.dirty)
        if isinstance(obj, orm.User) and sa.inspect(obj).attrs.admin.history.has_changes()
    ]
    reset = any(isinstance(obj, orm.Role) and obj.name == ADMIN_ROLE for obj in session.dirty)
    if not (users or reset):
        return
    role = orm.Role.find(session, ADMIN_ROLE)
    if role is None:
        return
    if reset:
        users += session.query(orm.User).filter(orm.User.admin.is_(True)).all()
    for user in users:
        if user.admin and role not in user.roles:
            user.roles.append(role)
        elif not user.admin and role in user.roles:
            user.roles.remove(role)


def configure_hub_security(c) -> None:
    """What every workbench hub needs (``workbench up`` and the Helm chart's hub alike): log
    lines without secrets, hub admins in `ADMIN_ROLE`, sessions trusting a token 5 s at most."""
    redact.install()
    follow_hub_admins()
    # jupyterhub-singleuser would trust a token for HubAuth's default of 5 minutes
    c.Spawner.args.append(f"--HubOAuth.cache_max_age={SESSION_AUTH_CACHE_SECONDS}")


def configure_hub_pages(c) -> None:
    """The hub's own pages lead to projects, never to the default server (which refuses to
    start): /hub/home lists the user's projects with Start / Open / Stop (docs/ui.md)."""
    c.JupyterHub.template_paths = [str(HUB_TEMPLATES)]
    c.JupyterHub.template_vars = {
        "workbench_service": SERVICE_NAME,
        "workbench_spawn_options": _spawn_options_reader,
    }
    c.JupyterHub.default_url = "/hub/home"


def _spawn_options_reader(user):
    """For home.html: an async function giving `user`'s projects, or None if the control plane
    does not answer. Read server side through the hub's spawner (the service token), because a
    hub page's script could not call the control plane: its API wants the service's own OAuth
    cookie and XSRF token, which the hub's pages do not hold."""
    if user is None:
        return None

    async def read():
        try:
            return await user.spawner.fetch_spawn_options()
        except Exception as e:
            user.log.warning("Cannot list %s's projects for the hub home: %s", user.name, e)
            return None

    return read


def configure_hub(c, settings: dict) -> None:
    """Fill a JupyterHub config object from ``workbench up``'s settings."""
    configure_hub_security(c)
    configure_hub_pages(c)
    s = settings
    public_url = f"http://{s['ip']}:{s['port']}"
    service_url = f"http://127.0.0.1:{s['service_port']}"
    prefix = f"/services/{SERVICE_NAME}"

    c.JupyterHub.bind_url = public_url
    c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{s['hub_port']}"
    c.JupyterHub.db_url = f"sqlite:///{s['data_dir']}/jupyterhub.sqlite"
    c.JupyterHub.cookie_secret_file = f"{s['data_dir']}/secrets/jupyterhub_cookie_secret"
    c.JupyterHub.pid_file = f"{s['data_dir']}/jupyterhub.pid"
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.named_server_limit_per_user = 0
    c.JupyterHub.cleanup_servers = True
    c.JupyterHub.cleanup_proxy = True
    c.JupyterHub.redirect_to_server = False

    c.JupyterHub.proxy_class = "configurable-http-proxy"
    # The Python port of configurable-http-proxy (no Node.js needed), streaming responses.
    c.ConfigurableHTTPProxy.command = [
        sys.executable,
        "-m",
        "workbench_hub.proxy",
        # a followed log may stream for hours; connecting still times out after 20 s
        f"--proxy-timeout={PROXY_STREAM_TIMEOUT_MS}",
    ]
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{s['proxy_api_port']}"
    c.ConfigurableHTTPProxy.should_start = True
    # shared with the control plane, which routes /models/<project>/<model>/ to replicas
    c.ConfigurableHTTPProxy.auth_token = s["proxy_token"]

    c.JupyterHub.authenticator_class = "workbench_hub.auth.WorkbenchAuthenticator"
    c.WorkbenchAuthenticator.users_file = f"{s['data_dir']}/users.json"

    c.JupyterHub.spawner_class = "workbench_spawner.local.WorkbenchLocalSpawner"
    c.WorkbenchLocalSpawner.workbench_api_url = f"{service_url}{prefix}/api/v1"
    c.WorkbenchLocalSpawner.workbench_api_token = s["service_token"]
    c.WorkbenchLocalSpawner.public_api_url = f"{public_url}{prefix}/api/v1"
    c.WorkbenchLocalSpawner.home_dir_template = f"{s['data_dir']}/homes/{{username}}"
    # the walls between users (docs/isolation.md), the same in the hub and the control plane
    walls = {
        "Isolation.enabled": bool(s.get("isolation")),
        "Isolation.project_root": s["project_root"],
        "Isolation.hidden_paths": [s["data_dir"], s["project_root"]],
        "UnixAccounts.home_dir_template": f"{s['data_dir']}/homes/{{username}}",
        "UnixAccounts.uid_record": f"{s['data_dir']}/unix-uids",
    }
    isolation = []
    for key, value in walls.items():
        section, trait = key.split(".")
        c[section][trait] = value
        isolation += [f"--{key}={v}" for v in (value if isinstance(value, list) else [value])]
    c.WorkbenchAuthenticator.only_user = s.get("only_user", "")

    command = [
        sys.executable,
        "-m",
        "workbench_hub",
        # the URL may hold a password: from a 0600 file, never on a command line
        f"--WorkbenchService.db_url_file={s['db_url_file']}",
        f"--WorkbenchService.project_root={s['project_root']}",
        f"--WorkbenchService.data_dir={s['data_dir']}",
        f"--WorkbenchService.public_hub_url={public_url}",
        f"--ProxyRoutes.api_url=http://127.0.0.1:{s['proxy_api_port']}",
        # replicas end with the workbench: stop them first, so they flush their metrics
        "--ModelSupervisor.stop_replicas_on_exit=True",
        *isolation,
    ]
    if s.get("config_file"):
        command.append(f"--WorkbenchService.config_file={s['config_file']}")
    c.JupyterHub.services = [
        {
            "name": SERVICE_NAME,
            "display": True,
            "url": service_url,
            "command": command,
            "api_token": s["service_token"],
            "oauth_no_confirm": True,
            # what a browser's OAuth token for the control plane may carry
            "oauth_client_allowed_scopes": list(CUSTOM_SCOPES),
            "cwd": s["data_dir"],
            "environment": {"CONFIGPROXY_AUTH_TOKEN": s["proxy_token"]},
        }
    ]
    c.JupyterHub.custom_scopes = CUSTOM_SCOPES
    c.JupyterHub.load_roles = [
        {
            "name": "user",
            "description": "Every user: their own resources and the workbench.",
            "scopes": ["self", "custom:workbench:use", f"access:services!service={SERVICE_NAME}"],
        },
        {
            "name": ADMIN_ROLE,
            "description": "Workbench administrators: the hub admins (follow_hub_admins).",
            "scopes": ["custom:workbench:admin", f"access:services!service={SERVICE_NAME}"],
        },
        {
            "name": "workbench-service",
            "description": "The control plane: reads users and groups, manages sessions.",
            "scopes": [
                "admin:servers",
                "admin:users",
                "read:groups",
                "list:users",
                "read:users",
                "custom:workbench:admin",
                f"access:services!service={SERVICE_NAME}",
                # mint WORKBENCH_TOKEN for job runs (POST /users/{name}/tokens)
                "tokens",
            ],
            "services": [SERVICE_NAME],
        },
    ]
    c.Authenticator.admin_users = set(s.get("admin_users", []))
