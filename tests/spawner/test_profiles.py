"""Reading resource profiles and choosing one."""

import pytest

from workbench_spawner.profiles import Profile, ProfileError, parse_memory, select_profile

SMALL = Profile("small", "Small", 0.5, 512 * 2**20)
LARGE = Profile("large", "Large", 4, 16 * 2**30, gpu=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2G", 2 * 2**30),
        ("512M", 512 * 2**20),
        ("512m", 512 * 2**20),
        ("1.5Gi", 3 * 2**29),
        ("2GiB", 2 * 2**30),
        ("2GB", 2 * 2**30),
        (" 64K ", 64 * 2**10),
        ("1T", 2**40),
        ("1000", 1000),
        ("1000B", 1000),
        (4096, 4096),
    ],
)
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["", "2X", "G", "-1G", "0", "1.5.2G", "2 G B", True, None, 0, 1.5])
def test_parse_memory_rejects(bad):
    with pytest.raises(ProfileError, match="memory must be"):
        parse_memory(bad)


def test_profile_from_control_plane_json():
    profile = Profile.from_dict(
        {"name": "large", "display_name": "Large", "cpu": 4, "memory": 16 * 2**30, "gpu": 1}
    )
    assert profile == LARGE
    assert profile.summary == "4 CPU · 16 GiB · 1 GPU"
    assert Profile.from_dict({"name": "s", "cpu": 0.5, "memory": "512M"}).summary == (
        "0.5 CPU · 512 MiB"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"cpu": 1, "memory": "1G"}, "needs a name"),
        ({"name": "x", "cpu": 0, "memory": "1G"}, "cpu must be a positive number"),
        ({"name": "x", "cpu": "2", "memory": "1G"}, "cpu must be a positive number"),
        ({"name": "x", "cpu": 1, "memory": "1G", "gpu": -1}, "gpu must be"),
        ({"name": "x", "cpu": 1, "memory": "lots"}, "profile 'x': memory must be"),
    ],
)
def test_profile_from_dict_rejects(data, message):
    with pytest.raises(ProfileError, match=message):
        Profile.from_dict(data)


def test_cores_round_up():
    assert [Profile("p", "p", cpu, 1).cores for cpu in (0.1, 1, 1.5, 2)] == [1, 1, 2, 2]


def test_select_profile_by_name_or_first():
    assert select_profile([SMALL, LARGE], "large") is LARGE
    assert select_profile([SMALL, LARGE], None) is SMALL
    assert select_profile([LARGE, SMALL], "") is LARGE


def test_select_profile_not_allowed_names_the_choices():
    with pytest.raises(ProfileError) as err:
        select_profile([SMALL], "large")
    assert str(err.value) == "Profile 'large' is not available to you. Choose one of: small."


def test_select_profile_none_allowed():
    with pytest.raises(ProfileError, match="No resource profile is available to you"):
        select_profile([], None)
