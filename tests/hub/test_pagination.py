"""List endpoints answer pages (`limit`, `offset`, `next`); the SDK and the CLI follow them."""

import json
from urllib.parse import parse_qsl, urlsplit

import pytest

import workbench
from tests.harness import SERVICE_API
from tests.hub.conftest import EXTRA_CONFIG, Api, unique

#: a small default page, so that every list below spans pages
CONFIG = EXTRA_CONFIG + "\nc.WorkbenchService.page_size = 3\n"


@pytest.fixture(scope="module")
def wb(workbench_factory):
    return workbench_factory(extra_config=CONFIG)


@pytest.fixture(scope="module")
def pager(wb):
    """A user with 7 projects, whose token and project names the tests share."""
    user = unique("pager")
    token = wb.user_token(user)
    api = Api(wb.api_url, token)
    names = sorted(unique("pg") for _ in range(7))
    for name in names:
        api("POST", "/projects", 201, json={"name": name})
    return api, token, names, user


def pages(api: Api, path: str, key: str, **params) -> list[dict]:
    """Every page of `path`, following `next.url`."""
    answers = [api("GET", path, 200, params=params)]
    while answers[-1]["next"] is not None:
        following = answers[-1]["next"]
        url = urlsplit(following["url"])
        assert url.path == SERVICE_API + path
        params = dict(parse_qsl(url.query))
        assert (params["offset"], params["limit"]) == tuple(
            str(following[k]) for k in ("offset", "limit")
        )
        answers.append(api("GET", path, 200, params=params))
    return answers


def test_pages_of_three_three_one(pager):
    api, _, names, _ = pager
    answers = pages(api, "/projects", "projects", limit="3")
    assert [len(a["projects"]) for a in answers] == [3, 3, 1]
    assert [a["next"] and a["next"]["offset"] for a in answers] == [3, 6, None]
    listed = [p["name"] for a in answers for p in a["projects"]]
    assert listed == names  # no duplicates, nothing missed, by name
    assert [p["name"] for p in pages(api, "/projects", "projects")[0]["projects"]] == names[:3]


def test_the_database_pages_the_audit_log(wb, pager):
    _, _, names, actor = pager
    admin = Api(wb.api_url, wb.admin_token)
    answers = pages(admin, "/audit", "events", actor=actor, action="project.created", limit="3")
    assert [len(a["events"]) for a in answers] == [3, 3, 1]
    created = [e["object_id"] for a in answers for e in a["events"]]
    assert created == names[::-1]  # newest first


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("limit", "0"),
        ("limit", "-1"),
        ("limit", "1001"),
        ("limit", str(10**30)),
        ("limit", "x"),
        ("limit", ""),
        ("offset", "-1"),
        ("offset", str(10**30)),
        ("offset", "x"),
    ],
)
def test_bad_limit_or_offset_is_a_400_naming_it(pager, field, value):
    api, _, _, _ = pager
    for path in ("/projects", f"/projects/{pager[2][0]}/jobs"):
        api.error("GET", path, 400, field=field, params={field: value})


def test_an_offset_past_the_end_is_an_empty_last_page(pager):
    api, _, names, _ = pager
    answer = api("GET", f"/projects/{names[0]}/jobs", 200, params={"offset": str(2**63 - 1)})
    assert answer == {"jobs": [], "next": None}


def test_the_sdk_follows_pages(wb, pager):
    _, token, names, _ = pager
    with workbench.Client(api_url=wb.api_url, token=token) as client:
        assert [p["name"] for p in client.projects.list()] == names


def test_the_cli_follows_pages(wb, pager):
    _, token, names, _ = pager
    listed = wb.cli(token, "projects", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [p["name"] for p in json.loads(listed.stdout)] == names
