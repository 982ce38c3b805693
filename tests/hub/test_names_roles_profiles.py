"""Unit tests: project names, the effective-role rule, resource profiles."""

import pytest
from traitlets import TraitError

from workbench_hub.app import WorkbenchService
from workbench_hub.names import InvalidName, validate_name
from workbench_hub.profiles import InvalidProfile, parse_memory, parse_profiles, profiles_for
from workbench_hub.roles import ADMIN_SCOPE, USE_SCOPE, Identity, Ownership, Role, effective_role


@pytest.mark.parametrize("name", ["a", "my-project", "0abc9", "a" * 63, "x-1-y"])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "A", "My-Project", "-a", "a-", "a_b", "a.b", "a b", "a" * 64, "ü", "../x", None, 3],
)
def test_invalid_names(name):
    with pytest.raises(InvalidName):
        validate_name(name)


def who(name="u", groups=(), admin_scope=False) -> Identity:
    scopes = {USE_SCOPE} | ({ADMIN_SCOPE} if admin_scope else set())
    return Identity(name, groups=frozenset(groups), scopes=frozenset(scopes))


OWNED_BY_ALICE = {
    v: Ownership("user", "alice", v, owner_groups=frozenset({"eng"}))
    for v in ("private", "team", "public")
}
OWNED_BY_ENG = {v: Ownership("team", "eng", v) for v in ("private", "team", "public")}


@pytest.mark.parametrize(
    ("caller", "project", "collaborator", "expected"),
    [
        # user owner: admin on every visibility
        (who("alice"), OWNED_BY_ALICE["private"], None, Role.ADMIN),
        # stranger: nothing on private, viewer on public
        (who("bob"), OWNED_BY_ALICE["private"], None, None),
        (who("bob"), OWNED_BY_ALICE["public"], None, Role.VIEWER),
        # team visibility: shares a group with the user owner → viewer; else nothing
        (who("bob", groups={"eng"}), OWNED_BY_ALICE["team"], None, Role.VIEWER),
        (who("bob", groups={"ops"}), OWNED_BY_ALICE["team"], None, None),
        (who("bob", groups={"eng"}), OWNED_BY_ALICE["private"], None, None),
        # collaborator role is kept, and wins over a lower visibility role
        (who("bob"), OWNED_BY_ALICE["private"], Role.OPERATOR, Role.OPERATOR),
        (who("bob"), OWNED_BY_ALICE["public"], Role.CONTRIBUTOR, Role.CONTRIBUTOR),
        # team owner: members are contributors, collaborators may be raised to admin
        (who("carol", groups={"eng"}), OWNED_BY_ENG["private"], None, Role.CONTRIBUTOR),
        (who("carol", groups={"eng"}), OWNED_BY_ENG["private"], Role.VIEWER, Role.CONTRIBUTOR),
        (who("carol", groups={"eng"}), OWNED_BY_ENG["private"], Role.ADMIN, Role.ADMIN),
        (who("dave", groups={"ops"}), OWNED_BY_ENG["team"], None, None),
        (who("dave", groups={"ops"}), OWNED_BY_ENG["public"], None, Role.VIEWER),
        # a user named like the team is not its owner
        (who("eng"), OWNED_BY_ENG["private"], None, None),
        # workbench admins (the admin scope on the token) are admin everywhere
        (who("root", admin_scope=True), OWNED_BY_ALICE["private"], None, Role.ADMIN),
        (who("root", admin_scope=True), OWNED_BY_ENG["private"], None, Role.ADMIN),
    ],
)
def test_effective_role(caller, project, collaborator, expected):
    assert effective_role(caller, project, collaborator) == expected


def test_role_order_and_read_only():
    assert Role.VIEWER < Role.OPERATOR < Role.CONTRIBUTOR < Role.ADMIN
    assert [r.read_only for r in Role] == [True, True, False, False]
    assert Role.parse("contributor") is Role.CONTRIBUTOR
    with pytest.raises(ValueError, match="role must be one of"):
        Role.parse("owner")


def test_identity_needs_use_scope():
    assert not Identity("x", scopes=frozenset({"access:services"})).can_use
    assert Identity("x", scopes=frozenset({USE_SCOPE})).can_use
    assert Identity("x", scopes=frozenset({ADMIN_SCOPE})).can_use


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1024, 1024),
        ("512M", 512 * 1024**2),
        ("2G", 2 * 1024**3),
        ("2Gi", 2 * 1024**3),
        ("1.5G", int(1.5 * 1024**3)),
        ("1T", 1024**4),
        ("100", 100),
    ],
)
def test_parse_memory(value, expected):
    assert parse_memory(value) == expected


@pytest.mark.parametrize("value", ["", "2X", "-1G", "G", 0, -5, True, 1.5, None, [1]])
def test_parse_memory_rejects(value):
    with pytest.raises(InvalidProfile):
        parse_memory(value)


def test_parse_profiles_normalises():
    [profile] = parse_profiles([{"name": "big", "cpu": 8, "memory": "32G"}])
    assert profile == {
        "name": "big",
        "display_name": "big",
        "cpu": 8,
        "memory": 32 * 1024**3,
        "gpu": 0,
        "groups": [],
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([{"name": "Big"}], "lowercase"),
        ([{"name": "a", "cpu": 0}], "cpu must be a positive number"),
        ([{"name": "a", "gpu": -1}], "gpu must be a non-negative integer"),
        ([{"name": "a", "groups": "eng"}], "groups must be a list"),
        ([{"name": "a", "memory": "lots"}], "memory must be bytes"),
        ([{"name": "a", "ram": "1G"}], "unknown field"),
        ([{"name": "a"}, {"name": "a"}], "unique"),
        (["a"], "must be a dict"),
    ],
)
def test_parse_profiles_rejects(raw, message):
    with pytest.raises(InvalidProfile, match=message):
        parse_profiles(raw)


def test_profiles_for_groups():
    profiles = parse_profiles(
        [
            {"name": "open"},
            {"name": "gpu", "groups": ["ml"]},
            {"name": "big", "groups": ["x", "ml"]},
        ]
    )
    assert [p["name"] for p in profiles_for(profiles, set())] == ["open"]
    assert [p["name"] for p in profiles_for(profiles, {"ml"})] == ["open", "gpu", "big"]


def test_service_validates_profiles_on_load():
    service = WorkbenchService(resource_profiles=[{"name": "s", "memory": "1G"}])
    assert service.resource_profiles[0]["memory"] == 1024**3
    with pytest.raises(TraitError, match="resource_profiles: resource profile 'bad'"):
        WorkbenchService(resource_profiles=[{"name": "bad", "cpu": "many"}])


def test_default_profile_is_normalised():
    [profile] = WorkbenchService().resource_profiles
    assert parse_profiles([profile]) == [profile]
