"""The spawn form: project and resource profile. Every value from outside is HTML-escaped."""

from html import escape
from urllib.parse import quote

from .client import SpawnOptions


def _links(spawn_url: str, options: SpawnOptions) -> str:
    if not options.projects:
        return "<p>You have no projects yet: create one in the Workbench first.</p>"
    items = "".join(
        f'<li><a href="{escape(spawn_url)}/{quote(p.name, safe="")}">{escape(p.name)}</a></li>'
        for p in options.projects
    )
    return f"<p>Start a session in one of your projects:</p><ul>{items}</ul>"


def _alert(message: str, spawn_url: str, options: SpawnOptions) -> str:
    return (
        '<div class="alert alert-warning" role="alert">'
        f"<p>{escape(message)}</p>{_links(spawn_url, options)}</div>"
    )


def render_form(server_name: str, options: SpawnOptions, spawn_url: str) -> str:
    """The form for starting server `server_name` (= the project name).

    `spawn_url` is the user's ``/hub/spawn/<user>`` path, used to link to their projects when
    this server cannot be a session.
    """
    if not server_name:
        return _alert("A session belongs to a project.", spawn_url, options)
    if options.project(server_name) is None:
        return _alert(f"You have no role on project {server_name}.", spawn_url, options)
    if not options.profiles:
        return _alert(
            "No resource profile is available to you; ask an administrator.", spawn_url, options
        )

    project_options = "".join(
        f'<option value="{escape(p.name)}"'
        + (" selected" if p.name == server_name else " disabled")
        + f">{escape(p.name)} ({escape(p.role)}{', read-only' if p.read_only else ''})</option>"
        for p in options.projects
    )
    profile_options = "".join(
        f'<option value="{escape(p.name)}"{" selected" if i == 0 else ""}>'
        f"{escape(p.display_name)} — {escape(p.summary)}</option>"
        for i, p in enumerate(options.profiles)
    )
    return (
        '<div class="mb-3">'
        '<label class="form-label" for="workbench-project">Project</label>'
        '<select class="form-select" id="workbench-project" name="project">'
        f"{project_options}</select>"
        '<div class="form-text">A session belongs to one project: '
        "this server's name is the project's name.</div>"
        "</div>"
        '<div class="mb-3">'
        '<label class="form-label" for="workbench-profile">Resource profile</label>'
        '<select class="form-select" id="workbench-profile" name="profile">'
        f"{profile_options}</select>"
        "</div>"
    )


def options_from_form(form_data: dict[str, list[str]]) -> dict[str, str]:
    """``{"project", "profile"}`` from the submitted form (missing or empty fields left out)."""
    values = {key: (form_data.get(key) or [""])[0] for key in ("project", "profile")}
    return {key: value for key, value in values.items() if value}
