"""Checking job definitions: pure functions from a request body to normalised column values.

Every failure is a `JobInvalid` naming the field at fault, which the handlers answer with 400.
`check_files` reads the project's files and blocks: call it in an executor.
"""

import ast
import functools
import os
import re
import zoneinfo
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import nbformat
from croniter import croniter

from workbench_hub.jobs import END_STATES, cron
from workbench_hub.names import InvalidName, validate_name

SCHEDULES = ("manual", "cron", "dependent")
CONCURRENCY = ("allow", "forbid", "replace")
RETRY_STATES = ("failed", "timed_out", "stopped")
TARGET_SUFFIXES = (".py", ".ipynb")
DEFAULT_RETRY_ON = ["failed", "timed_out"]
DEFAULT_NOTIFY_ON = ["failed", "timed_out"]
#: largest value of an Integer column on every backend
MAX_INT = 2**31 - 1
#: environment variables a run gets from the workbench, which a job may not set
RESERVED_ENV_PREFIXES = ("WORKBENCH_", "JUPYTERHUB_")

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EMAIL_RE = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\".]+$")
_NOTIFY_FIELDS = {"recipients", "on", "attach_notebook", "attach_log"}
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


class JobInvalid(ValueError):
    """A job definition that cannot be saved: `message` says what to fix in `field`."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


# ---------------------------------------------------------------- single fields


def job_name(value: object) -> str:
    try:
        return validate_name(value)
    except InvalidName as e:
        raise JobInvalid(str(e), "name") from None


def _text(value: str, field: str, max_length: int) -> str:
    if len(value) > max_length:
        raise JobInvalid(f"{field} must be at most {max_length} characters", field)
    if "\x00" in value:
        raise JobInvalid(f"{field} must not contain NUL characters", field)
    return value


def target_path(value: str) -> str:
    """The target normalised as a relative POSIX path, before looking at the files."""
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts or "\\" in value:
        raise JobInvalid("target must be a file inside the project", "target")
    normal = PurePosixPath(os.path.normpath(value)).as_posix()
    if normal in ("", "."):
        raise JobInvalid("target must be a file inside the project", "target")
    if path.suffix not in TARGET_SUFFIXES:
        raise JobInvalid(
            f"target must be a .py script or an .ipynb notebook, got {value!r}", "target"
        )
    return normal


def target_kind(target: str) -> str:
    """``notebook`` or ``script``."""
    return "notebook" if target.endswith(".ipynb") else "script"


def arguments(value: list, kind: str) -> list[str]:
    if not all(isinstance(a, str) for a in value):
        raise JobInvalid("arguments must be a list of strings", "arguments")
    if value and kind == "notebook":
        raise JobInvalid(
            "arguments are for .py scripts; give a notebook parameters instead", "arguments"
        )
    for argument in value:
        _text(argument, "arguments", 4096)
    return list(value)


def parameters_shape(value: dict, kind: str) -> dict:
    """Parameters checked without the notebook: names, and notebooks only."""
    if value and kind == "script":
        raise JobInvalid(
            "parameters are for .ipynb notebooks; give a script arguments instead", "parameters"
        )
    for key in value:
        if not key.isidentifier():
            raise JobInvalid(f"parameter {key!r} is not a Python variable name", "parameters")
    return dict(value)


def env(value: dict) -> dict[str, str]:
    for key, item in value.items():
        if not _ENV_NAME_RE.fullmatch(key):
            raise JobInvalid(
                f"environment variable name {key!r} must be letters, digits and '_',"
                " not starting with a digit",
                "env",
            )
        if key.upper().startswith(RESERVED_ENV_PREFIXES):
            raise JobInvalid(f"environment variable {key!r} is set by the workbench", "env")
        if not isinstance(item, str):
            raise JobInvalid(f"environment variable {key!r} must be a string", "env")
        _text(item, "env", 65536)
    return dict(value)


def profile(value: str | None, open_profiles: list[dict]) -> str:
    """`value`, if one of `open_profiles` (those the job's creator may use), else the first."""
    names = [p["name"] for p in open_profiles]
    if value is None:
        if not names:
            raise JobInvalid("no resource profile is open to the job's creator", "profile")
        return names[0]
    if value not in names:
        raise JobInvalid(
            f"profile {value!r} is not one the job's creator may use; choose one of {names}",
            "profile",
        )
    return value


def cron_expression(value: str) -> str:
    fields = value.split()
    if len(fields) != 5:
        raise JobInvalid(
            f"cron must have 5 fields (minute hour day month weekday), got {value!r}", "cron"
        )
    normal = " ".join(fields)
    if not croniter.is_valid(normal):
        raise JobInvalid(f"cron {value!r} is not a valid cron expression", "cron")
    return normal


@functools.cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def timezone(value: str) -> str:
    if value not in _time_zones():
        raise JobInvalid(
            f"timezone {value!r} is not an IANA time zone name such as 'Europe/Paris'",
            "timezone",
        )
    return value


def check_fires(expression: str, tz: str) -> None:
    """Refuse expressions that never fire (``0 0 30 2 *``)."""
    try:
        cron.next_tick(expression, tz, _EPOCH)
    except ValueError:  # InvalidCron, CroniterBadDateError
        raise JobInvalid(f"cron {expression!r} never fires", "cron") from None


def _integer(value: int, field: str, minimum: int) -> int:
    if value < minimum or value > MAX_INT:
        raise JobInvalid(f"{field} must be between {minimum} and {MAX_INT}, got {value}", field)
    return value


def timeout_seconds(value: int | None) -> int | None:
    if value is None:
        return None
    if value <= 0:
        raise JobInvalid(
            f"timeout_seconds must be > 0 (or null for none), got {value}", "timeout_seconds"
        )
    return _integer(value, "timeout_seconds", 1)


def retry_on(value: list) -> list[str]:
    for state in value:
        if state not in RETRY_STATES:
            raise JobInvalid(
                f"retry_on must be a subset of {list(RETRY_STATES)}, got {state!r}", "retry_on"
            )
    return [s for s in RETRY_STATES if s in value]


def concurrency(value: str) -> str:
    if value not in CONCURRENCY:
        raise JobInvalid(f"concurrency must be one of {list(CONCURRENCY)}", "concurrency")
    return value


def notify(value: dict) -> dict:
    """The notification settings with every key filled in."""
    unknown = sorted(set(value) - _NOTIFY_FIELDS)
    if unknown:
        raise JobInvalid(f"unknown field 'notify.{unknown[0]}'", "notify")
    recipients = value.get("recipients", [])
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        raise JobInvalid("notify.recipients must be a list of email addresses", "notify")
    for address in recipients:
        if len(address) > 254 or not _EMAIL_RE.fullmatch(address):
            raise JobInvalid(f"notify.recipients: {address!r} is not an email address", "notify")
    on = value.get("on", DEFAULT_NOTIFY_ON)
    if not isinstance(on, list) or not all(isinstance(s, str) and s in END_STATES for s in on):
        raise JobInvalid(f"notify.on must be a subset of {list(END_STATES)}", "notify")
    result = {
        "recipients": list(dict.fromkeys(recipients)),
        "on": [s for s in END_STATES if s in on],
    }
    for flag in ("attach_notebook", "attach_log"):
        flag_value = value.get(flag, False)
        if not isinstance(flag_value, bool):
            raise JobInvalid(f"notify.{flag} must be a boolean", "notify")
        result[flag] = flag_value
    return result


# ---------------------------------------------------------------- parents and cycles


def parent_name(value: str, project: str) -> str:
    """The parent job's name; ``other-project/job`` is refused (parents share the project)."""
    if "/" in value:
        owner, _, name = value.partition("/")
        if owner != project:
            raise JobInvalid(
                f"parent must be a job of project {project}; {value!r} is in project {owner!r}",
                "parent",
            )
        value = name
    try:
        return validate_name(value)
    except InvalidName:
        raise JobInvalid(
            f"parent must be a job of project {project}; no job {value!r}", "parent"
        ) from None


def check_cycle(job: str, parent: str, parents: dict[str, str | None]) -> None:
    """Refuse making `parent` the parent of `job`, given every job's parent in `parents`."""
    chain = [job, parent]
    seen = {job}
    current = parent
    while current is not None and current not in seen:
        seen.add(current)
        current = parents.get(current)
        if current is not None:
            chain.append(current)
    if current == job:
        raise JobInvalid("this would make a cycle: " + " → ".join(chain), "parent")


# ---------------------------------------------------------------- whole bodies


def merge(body: dict, current: dict | None, project: str) -> dict:
    """The job's fields after applying `body` (a create when `current` is None).

    Checks everything that needs no files, database or hub: the caller then checks the
    profile (`profile`), the parent (`check_cycle`) and the files (`check_files`).
    """
    values = dict(current or {})
    if current is None:
        values.update(
            name=job_name(body.get("name")),
            arguments=[],
            parameters={},
            env={},
            profile=None,
            schedule=None,
            cron=None,
            timezone=None,
            parent=None,
            active=True,
            timeout_seconds=None,
            retry_max=0,
            retry_delay_seconds=0,
            retry_on=list(DEFAULT_RETRY_ON),
            concurrency="forbid",
            notify=notify({}),
        )
    if "target" in body:
        values["target"] = target_path(body["target"])
    kind = target_kind(values["target"])
    if "arguments" in body or "target" in body:
        values["arguments"] = arguments(body.get("arguments", values["arguments"]), kind)
    if "parameters" in body or "target" in body:
        values["parameters"] = parameters_shape(body.get("parameters", values["parameters"]), kind)
    if "env" in body:
        values["env"] = env(body["env"])
    if "profile" in body:
        values["profile"] = body["profile"]
    if "active" in body:
        values["active"] = body["active"]
    if "timeout_seconds" in body:
        values["timeout_seconds"] = timeout_seconds(body["timeout_seconds"])
    if "retry_max" in body:
        values["retry_max"] = _integer(body["retry_max"], "retry_max", 0)
    if "retry_delay_seconds" in body:
        values["retry_delay_seconds"] = _integer(
            body["retry_delay_seconds"], "retry_delay_seconds", 0
        )
    if "retry_on" in body:
        values["retry_on"] = retry_on(body["retry_on"])
    if "concurrency" in body:
        values["concurrency"] = concurrency(body["concurrency"])
    if "notify" in body:
        values["notify"] = notify(body["notify"])
    _merge_schedule(body, values, project)
    return values


def _merge_schedule(body: dict, values: dict, project: str) -> None:
    schedule = body.get("schedule")
    if schedule is None:
        if body.get("cron") is not None:
            schedule = "cron"
        elif body.get("parent") is not None:
            schedule = "dependent"
        else:
            schedule = values["schedule"] or "manual"
    if schedule not in SCHEDULES:
        raise JobInvalid(f"schedule must be one of {list(SCHEDULES)}", "schedule")
    values["schedule"] = schedule
    if schedule == "cron":
        expression = body["cron"] if "cron" in body else values["cron"]
        if expression is None:
            raise JobInvalid("a cron schedule needs a cron expression", "cron")
        values["cron"] = cron_expression(expression)
        tz = body["timezone"] if "timezone" in body else values["timezone"]
        values["timezone"] = timezone(tz or "UTC")
        check_fires(values["cron"], values["timezone"])
    else:
        for field in ("cron", "timezone"):
            if body.get(field) is not None:
                raise JobInvalid(f"{field} is only for schedule 'cron'", field)
        values["cron"] = values["timezone"] = None
    if schedule == "dependent":
        parent = body["parent"] if "parent" in body else values["parent"]
        if parent is None:
            raise JobInvalid("a dependent job needs a parent job", "parent")
        values["parent"] = parent_name(parent, project)
    else:
        if body.get("parent") is not None:
            raise JobInvalid("parent is only for schedule 'dependent'", "parent")
        values["parent"] = None


# ---------------------------------------------------------------- project files (blocking)


def check_files(project_dir: Path, target: str, parameters: dict | None) -> None:
    """Check that `target` is a file inside `project_dir` and declares `parameters`.

    `parameters` None skips reading the notebook. Blocking: run it in an executor.
    """
    base = project_dir.resolve()
    path = (base / target).resolve()
    if not path.is_relative_to(base) or path == base:
        raise JobInvalid("target must be a file inside the project", "target")
    if not path.exists():
        raise JobInvalid(f"target {target!r} does not exist in the project", "target")
    if not path.is_file():
        raise JobInvalid(f"target {target!r} is not a file", "target")
    if parameters is not None and target_kind(target) == "notebook":
        declared = notebook_parameters(path, target)
        if parameters and declared is None:
            raise JobInvalid(
                f"notebook {target!r} has no cell tagged 'parameters' to receive parameters",
                "parameters",
            )
        for key in parameters:
            if key not in (declared or ()):
                raise JobInvalid(
                    f"parameter {key!r} is not declared in the 'parameters' cell of {target!r}"
                    f" (declared: {sorted(declared or ())})",
                    "parameters",
                )


def notebook_parameters(path: Path, target: str) -> set[str] | None:
    """Variables assigned in the cell(s) tagged ``parameters``; None if there is no such cell."""
    try:
        notebook = nbformat.read(path, as_version=4)
    except Exception as e:  # nbformat raises many kinds on a broken file
        raise JobInvalid(f"target {target!r} is not a readable notebook: {e}", "target") from None
    declared = None
    for cell in notebook.cells:
        if cell.get("cell_type") != "code" or "parameters" not in cell.get("metadata", {}).get(
            "tags", []
        ):
            continue
        declared = declared or set()
        declared |= assigned_names(cell.get("source", ""))
    return declared


def assigned_names(source: str) -> set[str]:
    """Top-level variable names assigned by `source` (IPython magics and shell lines ignored)."""
    lines = [
        line[: len(line) - len(line.lstrip())] + "pass"
        if line.lstrip().startswith(("%", "!"))
        else line
        for line in source.splitlines()
    ]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return set()
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                names |= _target_names(target)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            names |= _target_names(node.target)
    return names


def _target_names(node: ast.expr) -> set[str]:
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Tuple | ast.List):
        return set().union(*(_target_names(e) for e in node.elts))
    if isinstance(node, ast.Starred):
        return _target_names(node.value)
    return set()
