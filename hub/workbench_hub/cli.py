"""The ``workbench`` command line."""

import argparse
import asyncio
import getpass
import json
import os
import sys
from pathlib import Path

import httpx
from tabulate import tabulate

DEFAULT_API_URL = "http://127.0.0.1:8000/services/workbench/api/v1"
ROLES = ("viewer", "operator", "contributor", "admin")


class CLIError(Exception):
    """An error to print as one line, without a traceback."""


# ---------------------------------------------------------------- up, upgrade-db, users


def _up_from_args(args):
    from traitlets.config import Config

    from .up import WorkbenchUp

    config = Config()
    for trait in ("data_dir", "ip", "port", "hub_port", "service_port", "proxy_api_port"):
        value = getattr(args, trait, None)
        if value is not None:
            config.WorkbenchUp[trait] = value
    if args.db_url:
        config.WorkbenchUp.db_url = args.db_url
    if getattr(args, "config", None):
        config.WorkbenchUp.config_file = str(Path(args.config).resolve())
    return WorkbenchUp(config=config)


def cmd_up(args) -> int:
    return asyncio.run(_up_from_args(args).run())


def cmd_upgrade_db(args) -> int:
    from . import db

    url = _up_from_args(args).db_url
    before = db.current_revision(url)
    db.upgrade_db(url)
    print(f"database upgraded from {before or 'empty'} to {db.current_revision(url)}")
    return 0


def _user_store(args):
    from .auth import UserStore

    return UserStore(Path(_up_from_args(args).data_dir) / "users.json")


def _read_password(args) -> str:
    if args.password_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise CLIError("the passwords differ")
    return first


def cmd_users_add(args) -> int:
    store = _user_store(args)
    try:
        store.set_password(args.name, _read_password(args), admin=args.admin or None)
    except ValueError as e:
        raise CLIError(str(e)) from None
    print(f"user {args.name} can now log in")
    return 0


def cmd_users_remove(args) -> int:
    if not _user_store(args).remove(args.name):
        raise CLIError(f"no user {args.name!r}")
    print(f"user {args.name} removed")
    return 0


def cmd_users_list(args) -> int:
    users = _user_store(args).load()
    rows = [{"name": n, "admin": bool(u.get("admin"))} for n, u in sorted(users.items())]
    _print(args, rows, ["name", "admin"])
    return 0


# ---------------------------------------------------------------- REST clients


def _client(args) -> httpx.Client:
    token = (
        args.token or os.environ.get("WORKBENCH_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN")
    )
    if not token:
        raise CLIError("no API token: pass --token or set WORKBENCH_TOKEN")
    url = args.url or os.environ.get("WORKBENCH_API_URL") or DEFAULT_API_URL
    return httpx.Client(
        base_url=url.rstrip("/") + "/",
        headers={"Authorization": f"token {token}"},
        timeout=120,
    )


def _call(args, method: str, path: str, **kwargs):
    try:
        with _client(args) as client:
            response = client.request(method, path.lstrip("/"), **kwargs)
    except httpx.HTTPError as e:
        raise CLIError(f"cannot reach the workbench: {e}") from None
    if response.status_code >= 400:
        try:
            message = response.json().get("message", response.text)
        except ValueError:
            message = response.text or response.reason_phrase
        raise CLIError(f"{response.status_code}: {message}")
    return response.json() if response.content else None


def _print(args, rows, columns) -> None:
    if args.json:
        print(json.dumps(rows, indent=2))
    elif isinstance(rows, dict):
        print(tabulate([(k, rows.get(k)) for k in columns], tablefmt="plain"))
    else:
        print(tabulate([[r.get(c) for c in columns] for r in rows], headers=columns))


PROJECT_COLUMNS = ["name", "owner", "visibility", "role", "description"]


def _project_row(project: dict) -> dict:
    owner = project.get("owner") or {}
    return {**project, "owner": f"{owner.get('kind')}:{owner.get('name')}"}


def cmd_projects_list(args) -> int:
    projects = _call(args, "GET", "projects")["projects"]
    if args.json:
        _print(args, projects, PROJECT_COLUMNS)
    else:
        _print(args, [_project_row(p) for p in projects], PROJECT_COLUMNS)
    return 0


def cmd_projects_show(args) -> int:
    project = _call(args, "GET", f"projects/{args.name}")
    _print(args, project if args.json else _project_row(project), [*PROJECT_COLUMNS, "path"])
    return 0


def cmd_projects_create(args) -> int:
    body = {"name": args.name, "visibility": args.visibility}
    if args.description:
        body["description"] = args.description
    if args.team:
        body["owner"] = {"kind": "team", "name": args.team}
    if args.template:
        body["template"] = args.template
    if args.git_url:
        body["git_url"] = args.git_url
    project = _call(args, "POST", "projects", json=body)
    _print(args, project if args.json else _project_row(project), [*PROJECT_COLUMNS, "path"])
    return 0


def cmd_projects_delete(args) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise CLIError("deleting removes the project's sessions and files: pass --yes")
        if input(f"Type the project name ({args.name}) to delete it: ").strip() != args.name:
            raise CLIError("not confirmed; nothing was deleted")
    _call(args, "DELETE", f"projects/{args.name}", params={"confirm": args.name})
    print(f"project {args.name} deleted")
    return 0


def cmd_collaborators_list(args) -> int:
    rows = _call(args, "GET", f"projects/{args.project}/collaborators")["collaborators"]
    _print(args, rows, ["user", "role"])
    return 0


def cmd_collaborators_add(args) -> int:
    row = _call(
        args, "PUT", f"projects/{args.project}/collaborators/{args.user}", json={"role": args.role}
    )
    _print(args, [row], ["user", "role"])
    return 0


def cmd_collaborators_remove(args) -> int:
    _call(args, "DELETE", f"projects/{args.project}/collaborators/{args.user}")
    print(f"{args.user} removed from {args.project}")
    return 0


# ---------------------------------------------------------------- parser


def _local_options(p) -> None:
    p.add_argument("--data-dir", help="data directory (default ~/.jupyter-workbench)")
    p.add_argument("--db-url", help="control plane database URL (default SQLite in the data dir)")


def _api_options(p) -> None:
    p.add_argument(
        "--url", help=f"control plane API URL (default $WORKBENCH_API_URL or {DEFAULT_API_URL})"
    )
    p.add_argument("--token", help="API token (default $WORKBENCH_TOKEN)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="Jupyter Workbench")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole workbench on this machine")
    _local_options(up)
    up.add_argument("--ip", help="address to listen on (default 127.0.0.1)")
    up.add_argument("--port", type=int, help="public port (default 8000)")
    up.add_argument("--hub-port", type=int, help="internal hub port (default 8081)")
    up.add_argument("--service-port", type=int, help="internal control plane port (default 8082)")
    up.add_argument("--proxy-api-port", type=int, help="internal proxy API port (default 8001)")
    up.add_argument(
        "--config", help="extra configuration file (default data-dir/workbench_config.py)"
    )
    up.set_defaults(func=cmd_up)

    upgrade = sub.add_parser("upgrade-db", help="upgrade the control plane's database schema")
    _local_options(upgrade)
    upgrade.set_defaults(func=cmd_upgrade_db)

    users = sub.add_parser("users", help="manage the embedded workbench's users").add_subparsers(
        dest="users_command", required=True
    )
    add = users.add_parser("add", help="add a user or change their password")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="make the user an administrator")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    _local_options(add)
    add.set_defaults(func=cmd_users_add)
    remove = users.add_parser("remove", help="remove a user's login")
    remove.add_argument("name")
    _local_options(remove)
    remove.set_defaults(func=cmd_users_remove)
    ulist = users.add_parser("list", help="list users")
    _local_options(ulist)
    ulist.add_argument("--json", action="store_true")
    ulist.set_defaults(func=cmd_users_list)

    projects = sub.add_parser("projects", help="manage projects").add_subparsers(
        dest="projects_command", required=True
    )
    plist = projects.add_parser("list", help="list the projects you can see")
    _api_options(plist)
    plist.set_defaults(func=cmd_projects_list)
    show = projects.add_parser("show", help="show one project")
    show.add_argument("name")
    _api_options(show)
    show.set_defaults(func=cmd_projects_show)
    create = projects.add_parser("create", help="create a project")
    create.add_argument("name")
    create.add_argument("--description")
    create.add_argument("--visibility", choices=("private", "team", "public"), default="private")
    create.add_argument("--team", help="owning team (a JupyterHub group you belong to)")
    source = create.add_mutually_exclusive_group()
    source.add_argument("--template", help="start from a built-in template")
    source.add_argument("--git-url", help="start from a git repository")
    _api_options(create)
    create.set_defaults(func=cmd_projects_create)
    delete = projects.add_parser("delete", help="delete a project, its sessions and its files")
    delete.add_argument("name")
    delete.add_argument("--yes", action="store_true", help="confirm without asking")
    _api_options(delete)
    delete.set_defaults(func=cmd_projects_delete)

    collab = projects.add_parser("collaborators", help="manage a project's collaborators")
    csub = collab.add_subparsers(dest="collaborators_command", required=True)
    clist = csub.add_parser("list", help="list collaborators")
    clist.add_argument("project")
    _api_options(clist)
    clist.set_defaults(func=cmd_collaborators_list)
    cadd = csub.add_parser("add", help="add a collaborator or change their role")
    cadd.add_argument("project")
    cadd.add_argument("user")
    cadd.add_argument("--role", choices=ROLES, default="viewer")
    _api_options(cadd)
    cadd.set_defaults(func=cmd_collaborators_add)
    cremove = csub.add_parser("remove", help="remove a collaborator")
    cremove.add_argument("project")
    cremove.add_argument("user")
    _api_options(cremove)
    cremove.set_defaults(func=cmd_collaborators_remove)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as e:
        print(f"workbench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
