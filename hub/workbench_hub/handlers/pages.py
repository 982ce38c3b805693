"""The service's home page: what a browser sees from the hub's Services menu."""

from jupyterhub.services.auth import HubOAuthenticated
from tornado.escape import json_encode, url_escape
from tornado.template import Template

from workbench_hub.handlers.base import APIHandler
from workbench_hub.projects import list_templates

HOME = Template(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Jupyter Workbench</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; }
table { border-collapse: collapse; width: 100%; } td, th { padding: .4rem .6rem; text-align: left; }
tr + tr { border-top: 1px solid #ddd; } code { background: #f3f3f3; padding: 0 .2rem; }
#create-project label { display: block; margin-bottom: .5rem; }
</style></head>
<body>
<h1>Jupyter Workbench</h1>
<p>Signed in as <b>{{ user }}</b> · <a href="{{ hub }}home">Hub home</a> ·
<a href="{{ hub }}token">API tokens</a></p>
<h2>Your projects</h2>
{% if projects %}
<table id="projects">
<tr><th>Project</th><th>Role</th><th>Visibility</th><th>Description</th><th>Session</th></tr>
{% for p in projects %}
<tr data-project="{{ p['name'] }}"><td>{{ p["name"] }}</td><td>{{ p["role"] }}</td>
<td>{{ p["visibility"] }}</td><td>{{ p["description"] }}</td>
<td><a href="{{ hub }}spawn/{{ url_escape(user) }}/{{ p['name'] }}">start or open</a></td></tr>
{% end %}
</table>
{% else %}
<p>You have no projects yet.</p>
{% end %}
<h2 id="create">Create a project</h2>
<form id="create-project">
<p><label>Name <input name="name" required maxlength="63" pattern="[a-z0-9]([\\-a-z0-9]*[a-z0-9])?"
 title="lower-case letters, digits and dashes"></label>
<label>Template <select name="template"><option value="">none (empty project)</option>
{% for t in templates %}
<option value="{{ t['name'] }}">{{ t["name"] }}: {{ t["description"] }}</option>
{% end %}</select></label>
<button type="submit">Create</button></p>
<p id="create-error" role="alert"></p>
</form>
<p>Or use <code>workbench projects create NAME --token TOKEN</code>, or
<code>POST {{ api }}projects</code>; the API is described at
<a href="{{ api }}openapi.json">openapi.json</a>.</p>
<script>
// POST to the API with this page's OAuth cookie and XSRF token; then the hub home lists it.
document.getElementById("create-project").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const body = {name: form.get("name")};
  if (form.get("template")) body.template = form.get("template");
  const r = await fetch({% raw json_encode(api + "projects") %}, {
    method: "POST",
    headers: {"Content-Type": "application/json", "X-XSRFToken": {% raw json_encode(xsrf) %}},
    body: JSON.stringify(body),
  });
  if (r.status === 201) {
    window.location = {% raw json_encode(hub + "home") %};
    return;
  }
  const answer = await r.json().catch(() => ({}));
  document.getElementById("create-error").textContent = answer.message || r.statusText;
});
</script>
</body></html>
""",
    autoescape="xhtml_escape",
)


class HomeHandler(APIHandler):
    """Lists the caller's projects with links to their sessions, and a form to create one;
    logs browsers in first."""

    get_login_url = HubOAuthenticated.get_login_url

    async def prepare(self) -> None:
        if not await self.hub_auth.get_user(self, sync=False):
            self.redirect(self.get_login_url())
            return
        await super().prepare()

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")

    async def get(self):
        hub = self.hub_auth.hub_prefix
        page = HOME.generate(
            user=self.identity.name,
            projects=(await self.project_listing())[0],
            hub=hub,
            api=self.request.path.rstrip("/") + "/api/v1/",
            url_escape=url_escape,
            json_encode=json_encode,
            templates=list_templates(),
            xsrf=self.xsrf_token.decode(),
        )
        self.finish(page)
