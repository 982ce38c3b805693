"""The spawn form: what a user sees and what a submission becomes."""

from workbench_spawner.client import ProjectAccess, SpawnOptions
from workbench_spawner.form import options_from_form, render_form
from workbench_spawner.profiles import Profile

SPAWN_URL = "/hub/spawn/ana"
OPTIONS = SpawnOptions(
    projects=(
        ProjectAccess("demo", "contributor", "/p/demo", False),
        ProjectAccess("docs", "viewer", "/p/docs", True),
    ),
    profiles=(
        Profile("small", "Small", 1, 2**30),
        Profile("large", "Large", 4, 8 * 2**30, gpu=1),
    ),
)


def test_form_forces_the_servers_project_and_offers_profiles():
    html = render_form("docs", OPTIONS, SPAWN_URL)
    assert '<option value="docs" selected>docs (viewer, read-only)</option>' in html
    assert '<option value="demo" disabled>demo (contributor)</option>' in html
    assert '<option value="small" selected>Small — 1 CPU · 1 GiB</option>' in html
    assert '<option value="large">Large — 4 CPU · 8 GiB · 1 GPU</option>' in html
    assert 'name="project"' in html
    assert 'name="profile"' in html


def test_form_escapes_everything_from_outside():
    hostile = SpawnOptions(
        projects=(ProjectAccess("demo", "<b>admin</b>", "/p/demo", False),),
        profiles=(Profile('x"><script>alert(1)</script>', "<img src=x onerror=alert(1)>", 1, 1),),
    )
    html = render_form("demo", hostile, SPAWN_URL)
    assert "<script>" not in html
    assert "<img" not in html
    assert "<b>" not in html
    assert 'value="x&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "(&lt;b&gt;admin&lt;/b&gt;)" in html


def test_form_for_a_project_without_role_says_so_and_links_the_users_projects():
    html = render_form("<i>secret</i>", OPTIONS, SPAWN_URL)
    assert "You have no role on project &lt;i&gt;secret&lt;/i&gt;." in html
    assert '<a href="/hub/spawn/ana/demo">demo</a>' in html
    assert '<a href="/hub/spawn/ana/docs">docs</a>' in html
    assert "<select" not in html


def test_form_for_the_default_server_points_to_projects():
    html = render_form("", OPTIONS, SPAWN_URL)
    assert "A session belongs to a project." in html
    assert '<a href="/hub/spawn/ana/demo">demo</a>' in html
    assert "<select" not in html


def test_form_without_projects_or_profiles():
    empty = SpawnOptions(projects=(), profiles=())
    assert "You have no projects yet" in render_form("", empty, SPAWN_URL)
    no_profiles = SpawnOptions(projects=OPTIONS.projects, profiles=())
    html = render_form("demo", no_profiles, SPAWN_URL)
    assert "No resource profile is available to you; ask an administrator." in html
    assert "<select" not in html


def test_options_from_form():
    assert options_from_form({"project": ["demo"], "profile": ["large"]}) == {
        "project": "demo",
        "profile": "large",
    }
    assert options_from_form({"profile": ["large"], "next": ["/x"]}) == {"profile": "large"}
    assert options_from_form({"project": [], "profile": [""]}) == {}
