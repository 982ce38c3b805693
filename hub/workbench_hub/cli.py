"""The ``workbench`` command line."""

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import sys
import time
from pathlib import Path

import httpx
from tabulate import tabulate

from workbench_hub.jobs import END_STATES

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
    merged = WorkbenchUp(config=config).file_config()  # the file's c.WorkbenchUp settings
    merged.merge(config)  # under the command line's
    return WorkbenchUp(config=merged)


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
        _raise_for(response)
    return response.json() if response.content else None


def _list(args, path: str, key: str) -> list:
    """Every item of list endpoint `path`'s `key`, following its pages (``next``)."""
    items, params = [], {}
    while True:
        page = _call(args, "GET", path, params=params)
        items.extend(page[key])
        if page.get("next") is None:
            return items
        params = {"offset": page["next"]["offset"], "limit": page["next"]["limit"]}


def _raise_for(response: httpx.Response):
    try:
        message = response.json().get("message", response.text)
    except ValueError:
        message = response.text or response.reason_phrase
    raise CLIError(f"{response.status_code}: {message}")


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
    projects = _list(args, "projects", "projects")
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


# ---------------------------------------------------------------- jobs

JOB_COLUMNS = ["name", "target", "schedule", "active", "last_run", "next_run"]
JOB_DETAIL = [
    "name",
    "project",
    "target",
    "arguments",
    "parameters",
    "env",
    "profile",
    "schedule",
    "active",
    "timeout_seconds",
    "retries",
    "concurrency",
    "notify",
    "created_by",
    "created",
    "last_run",
    "next_run",
]
RUN_COLUMNS = [
    "number",
    "state",
    "trigger",
    "by",
    "exit_code",
    "queued_at",
    "finished_at",
    "message",
]


def _job_path(args, *rest) -> str:
    return "/".join(["projects", args.project, "jobs", args.job, *map(str, rest)])


def _key_values(pairs, option: str, parse_json: bool = False) -> dict:
    """``k=v`` options as a dict; with `parse_json`, values that are JSON become JSON."""
    result = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CLIError(f"{option} needs KEY=VALUE, got {pair!r}")
        if parse_json:
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        result[key] = value
    return result


def _states(value: str | None) -> list[str] | None:
    return None if value is None else [s.strip() for s in value.split(",") if s.strip()]


def _schedule_text(job: dict) -> str:
    if job.get("schedule") == "cron":
        return f"cron {job.get('cron')} {job.get('timezone')}"
    if job.get("schedule") == "dependent":
        return f"after {job.get('parent')}"
    return "manual"


def _run_text(run: dict | None) -> str:
    if not run:
        return ""
    return f"#{run['number']} {run['state']}"


def _job_row(job: dict) -> dict:
    retries = f"{job.get('retry_max')} (delay {job.get('retry_delay_seconds')} s,"
    retries += f" on {', '.join(job.get('retry_on') or []) or 'nothing'})"
    return {
        **job,
        "schedule": _schedule_text(job),
        "active": "yes" if job.get("active") else "paused",
        "last_run": _run_text(job.get("last_run")),
        "next_run": job.get("next_run") or "",
        "retries": retries,
        "arguments": " ".join(job.get("arguments") or []),
        "parameters": json.dumps(job.get("parameters") or {}),
        "env": ", ".join(sorted(job.get("env") or {})),
        "notify": json.dumps(job.get("notify") or {}),
    }


def _run_row(run: dict) -> dict:
    return {**run, "by": run.get("triggered_by") or ""}


def _print_job(args, job: dict) -> None:
    _print(args, job if args.json else _job_row(job), JOB_DETAIL)


def _print_run(args, run: dict) -> None:
    _print(args, run if args.json else _run_row(run), RUN_COLUMNS)


def cmd_jobs_create(args) -> int:
    body = {"name": args.job, "target": args.file}
    if args.arg:
        body["arguments"] = args.arg
    if args.param:
        body["parameters"] = _key_values(args.param, "--param", parse_json=True)
    if args.env:
        body["env"] = _key_values(args.env, "--env")
    optional = {
        "profile": args.profile,
        "cron": args.cron,
        "timezone": args.timezone,
        "parent": args.parent,
        "timeout_seconds": args.timeout,
        "retry_max": args.retries,
        "retry_delay_seconds": args.retry_delay,
        "retry_on": _states(args.retry_on),
        "concurrency": args.concurrency,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if args.paused:
        body["active"] = False
    if args.notify or args.notify_on:
        notify = {"recipients": args.notify or []}
        if args.notify_on:
            notify["on"] = _states(args.notify_on)
        if args.attach_notebook:
            notify["attach_notebook"] = True
        if args.attach_log:
            notify["attach_log"] = True
        body["notify"] = notify
    _print_job(args, _call(args, "POST", f"projects/{args.project}/jobs", json=body))
    return 0


def cmd_jobs_list(args) -> int:
    jobs = _list(args, f"projects/{args.project}/jobs", "jobs")
    _print(args, jobs if args.json else [_job_row(j) for j in jobs], JOB_COLUMNS)
    return 0


def cmd_jobs_show(args) -> int:
    _print_job(args, _call(args, "GET", _job_path(args)))
    return 0


def cmd_jobs_pause(args) -> int:
    _print_job(args, _call(args, "POST", _job_path(args, "pause")))
    return 0


def cmd_jobs_resume(args) -> int:
    _print_job(args, _call(args, "POST", _job_path(args, "resume")))
    return 0


def cmd_jobs_delete(args) -> int:
    if not args.yes:
        raise CLIError("deleting a job removes its runs and their outputs: pass --yes")
    _call(args, "DELETE", _job_path(args))
    print(f"job {args.job} of project {args.project} deleted")
    return 0


def cmd_jobs_run(args) -> int:
    run = _call(args, "POST", _job_path(args, "runs"))
    if args.wait:
        run = _wait_for_run(args, run["number"])
    _print_run(args, run)
    return 0 if not args.wait or run["state"] == "succeeded" else 2


def _wait_for_run(args, number: int) -> dict:
    while True:
        run = _call(args, "GET", _job_path(args, "runs", number))
        if run["state"] in END_STATES:
            return run
        time.sleep(1)


def cmd_jobs_runs(args) -> int:
    runs = _list(args, _job_path(args, "runs"), "runs")
    _print(args, runs if args.json else [_run_row(r) for r in runs], RUN_COLUMNS)
    return 0


def cmd_jobs_stop(args) -> int:
    _print_run(args, _call(args, "POST", _job_path(args, "runs", args.run, "stop")))
    return 0


def cmd_jobs_logs(args) -> int:
    number = args.run
    if number is None:
        runs = _call(args, "GET", _job_path(args, "runs"), params={"limit": 1})["runs"]
        if not runs:
            raise CLIError(f"job {args.job} has no runs yet")
        number = runs[0]["number"]
    params = {"follow": "true"} if args.follow else {}
    try:
        with (
            _client(args) as client,
            client.stream(
                "GET", _job_path(args, "runs", number, "logs"), params=params, timeout=None
            ) as response,
        ):
            if response.status_code >= 400:
                response.read()
                _raise_for(response)
            for text in response.iter_text():
                sys.stdout.write(text)
                sys.stdout.flush()
    except httpx.HTTPError as e:
        raise CLIError(f"cannot reach the workbench: {e}") from None
    return 0


# ---------------------------------------------------------------- models

MODEL_COLUMNS = ["name", "file", "function", "deployment", "state", "replicas", "url"]
BUILD_COLUMNS = ["number", "state", "created", "created_by", "message"]
KEY_COLUMNS = ["id", "prefix", "description", "created", "created_by", "revoked"]
DEPLOYMENT_END = ("running", "failed", "stopped", "superseded")


def _model_path(args, *rest) -> str:
    return "/".join(["projects", args.project, "models", args.model, *map(str, rest)])


def _model_row(model: dict) -> dict:
    deployment = model.get("deployment") or {}
    ready = deployment.get("ready_replicas")
    return {
        **model,
        "deployment": deployment.get("number"),
        "state": deployment.get("state"),
        "replicas": f"{ready}/{deployment['replicas']}" if deployment else model["replicas"],
    }


def _current_deployment(args) -> dict:
    deployment = _call(args, "GET", _model_path(args))["deployment"]
    if deployment is None:
        raise CLIError(f"model {args.model} has never been deployed")
    return deployment


def _wait_for(args, path: str, done) -> dict:
    deadline = time.monotonic() + args.timeout
    while True:
        item = _call(args, "GET", path)
        if done(item):
            return item
        if time.monotonic() > deadline:
            raise CLIError(f"gave up waiting after {args.timeout} s; state is {item['state']}")
        time.sleep(1)


def cmd_models_deploy(args) -> int:
    fields = {
        "file": args.file,
        "function": args.function,
        "description": args.description,
        "profile": args.profile,
        "env": _key_values(args.env, "--env") if args.env else None,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    models = _list(args, f"projects/{args.project}/models", "models")
    if any(m["name"] == args.model for m in models):
        if fields:
            _call(args, "PATCH", _model_path(args), json=fields)
    else:
        if not (args.file and args.function):
            raise CLIError("a new model needs --file and --function")
        _call(
            args,
            "POST",
            f"projects/{args.project}/models",
            json={"name": args.model, "replicas": args.replicas or 1, **fields},
        )
    number = args.build
    if number is None:
        build = _call(args, "POST", _model_path(args, "builds"))
        print(f"build {build['number']} started", file=sys.stderr)
        build = _wait_for(
            args,
            _model_path(args, "builds", build["number"]),
            lambda b: b["state"] in ("succeeded", "failed"),
        )
        if build["state"] == "failed":
            raise CLIError(f"build {build['number']} failed: {build['message']}")
        number = build["number"]
    body = {"build": number, **({"replicas": args.replicas} if args.replicas else {})}
    deployment = _call(args, "POST", _model_path(args, "deployments"), json=body)
    print(f"deployment {deployment['number']} of build {number} started", file=sys.stderr)
    if args.no_wait:
        _print(args, deployment, list(deployment))
        return 0
    deployment = _wait_for(
        args,
        _model_path(args, "deployments", deployment["number"]),
        lambda d: d["state"] in DEPLOYMENT_END,
    )
    _print(args, deployment, ["number", "crn", "build", "state", "replicas", "message"])
    return 0 if deployment["state"] == "running" else 2


def cmd_models_list(args) -> int:
    models = _list(args, f"projects/{args.project}/models", "models")
    _print(args, models if args.json else [_model_row(m) for m in models], MODEL_COLUMNS)
    return 0


def cmd_models_builds(args) -> int:
    if args.log is not None:
        with _client(args) as client:
            response = client.get(_model_path(args, "builds", args.log, "log"))
        if response.status_code >= 400:
            _raise_for(response)
        sys.stdout.write(response.text)
        return 0
    builds = _list(args, _model_path(args, "builds"), "builds")
    _print(args, builds, BUILD_COLUMNS)
    return 0


def cmd_models_keys(args) -> int:
    if args.create:
        key = _call(args, "POST", _model_path(args, "keys"), json={"description": args.create})
    elif args.rotate is not None:
        key = _call(args, "POST", _model_path(args, "keys", args.rotate, "rotate"))
    elif args.revoke is not None:
        _call(args, "DELETE", _model_path(args, "keys", args.revoke))
        print(f"access key {args.revoke} revoked")
        return 0
    else:
        keys = _call(args, "GET", _model_path(args, "keys"))["keys"]
        _print(args, keys, KEY_COLUMNS)
        return 0
    if args.json:
        print(json.dumps(key, indent=2))
    else:
        print(f"access key {key['id']} (shown only now): {key['key']}")
    return 0


def cmd_models_logs(args) -> int:
    with _client(args) as client:
        response = client.get(_model_path(args, "logs"))
    if response.status_code >= 400:
        _raise_for(response)
    sys.stdout.write(response.text)
    return 0


def cmd_models_scale(args) -> int:
    deployment = _current_deployment(args)
    changed = _call(
        args,
        "PATCH",
        _model_path(args, "deployments", deployment["number"]),
        json={"replicas": args.replicas},
    )
    _print(args, changed, ["number", "state", "replicas", "ready_replicas"])
    return 0


def cmd_models_stop(args) -> int:
    deployment = _current_deployment(args)
    changed = _call(
        args,
        "PATCH",
        _model_path(args, "deployments", deployment["number"]),
        json={"state": "stopped"},
    )
    _print(args, changed, ["number", "state", "replicas"])
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
    _jobs_parser(sub)
    _models_parser(sub)
    return parser


def _jobs_parser(sub) -> None:
    jobs = sub.add_parser("jobs", help="manage a project's jobs and their runs").add_subparsers(
        dest="jobs_command", required=True
    )

    def command(name, func, help, run=False, job=True):
        p = jobs.add_parser(name, help=help)
        p.add_argument("project")
        if job:
            p.add_argument("job")
        if run:
            p.add_argument("run", type=int, help="run number")
        _api_options(p)
        p.set_defaults(func=func)
        return p

    create = command("create", cmd_jobs_create, "create a job")
    create.add_argument(
        "--file", required=True, help="the .py or .ipynb file, relative to the project"
    )
    create.add_argument("--arg", action="append", help="a script argument (repeatable)")
    create.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="a notebook parameter (repeatable); VALUE is parsed as JSON when it is JSON",
    )
    create.add_argument(
        "--env", action="append", metavar="KEY=VALUE", help="an environment variable (repeatable)"
    )
    create.add_argument("--profile", help="resource profile (default: the first open to you)")
    create.add_argument("--cron", help="run on this 5-field cron schedule, e.g. '0 6 * * 1-5'")
    create.add_argument("--timezone", help="IANA time zone of --cron (default UTC)")
    create.add_argument("--parent", help="run after each success of this job of the project")
    create.add_argument("--timeout", type=int, help="kill a run after this many seconds")
    create.add_argument("--retries", type=int, help="retry a failed run this many times")
    create.add_argument("--retry-delay", type=int, help="seconds to wait before a retry")
    create.add_argument("--retry-on", help="end states to retry, comma-separated")
    create.add_argument("--concurrency", choices=("allow", "forbid", "replace"))
    create.add_argument("--notify", action="append", metavar="EMAIL", help="email recipient")
    create.add_argument("--notify-on", help="end states that send email, comma-separated")
    create.add_argument("--attach-notebook", action="store_true", help="attach the notebook")
    create.add_argument("--attach-log", action="store_true", help="attach the log tail")
    create.add_argument("--paused", action="store_true", help="create the job paused")
    command("list", cmd_jobs_list, "list a project's jobs", job=False)
    command("show", cmd_jobs_show, "show one job")
    command("pause", cmd_jobs_pause, "stop scheduling a job")
    command("resume", cmd_jobs_resume, "schedule a job again")
    command("delete", cmd_jobs_delete, "delete a job, its runs and outputs").add_argument(
        "--yes", action="store_true", help="confirm"
    )
    command("run", cmd_jobs_run, "run a job now").add_argument(
        "--wait", action="store_true", help="wait for the run to end; exit 2 unless it succeeded"
    )
    command("runs", cmd_jobs_runs, "list a job's runs, newest first")
    command("stop", cmd_jobs_stop, "stop a run", run=True)
    logs = command("logs", cmd_jobs_logs, "print a run's output (default: the newest run)")
    logs.add_argument("run", type=int, nargs="?", help="run number (default: the newest)")
    logs.add_argument("--follow", "-f", action="store_true", help="stream until the run ends")


def _models_parser(sub) -> None:
    models = sub.add_parser("models", help="deploy and manage a project's models").add_subparsers(
        dest="models_command", required=True
    )

    def command(name, func, help, model=True):
        p = models.add_parser(name, help=help)
        p.add_argument("project")
        if model:
            p.add_argument("model")
        _api_options(p)
        p.set_defaults(func=func)
        return p

    deploy = command("deploy", cmd_models_deploy, "create or update a model, build it, deploy it")
    deploy.add_argument("--file", help="the .py file, relative to the project")
    deploy.add_argument("--function", help="the function called with each request")
    deploy.add_argument("--description")
    deploy.add_argument("--profile", help="resource profile of each replica")
    deploy.add_argument("--replicas", type=int, help="number of replicas (default 1)")
    deploy.add_argument(
        "--env", action="append", metavar="KEY=VALUE", help="an environment variable (repeatable)"
    )
    deploy.add_argument("--build", type=int, help="deploy this build instead of a new one")
    deploy.add_argument("--no-wait", action="store_true", help="do not wait for the replicas")
    deploy.add_argument("--timeout", type=float, default=900, help="seconds to wait (900)")
    command("list", cmd_models_list, "list a project's models", model=False)
    builds = command("builds", cmd_models_builds, "list a model's builds")
    builds.add_argument("--log", type=int, metavar="NUMBER", help="print this build's log")
    keys = command("keys", cmd_models_keys, "list, create, rotate or revoke access keys")
    action = keys.add_mutually_exclusive_group()
    action.add_argument("--create", metavar="DESCRIPTION", help="create a key")
    action.add_argument("--rotate", type=int, metavar="ID", help="replace a key by a new one")
    action.add_argument("--revoke", type=int, metavar="ID", help="revoke a key")
    command("logs", cmd_models_logs, "print the replicas' logs of the current deployment")
    command("scale", cmd_models_scale, "change the number of replicas").add_argument(
        "replicas", type=int
    )
    command("stop", cmd_models_stop, "stop the current deployment")


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
