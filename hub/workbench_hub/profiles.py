"""Resource profiles: parsing the admin's configuration and choosing those a user may use."""

import re

from workbench_hub.names import InvalidName, validate_name

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B?)?\s*$", re.IGNORECASE)
_FIELDS = {"name", "display_name", "cpu", "memory", "gpu", "groups"}


class InvalidProfile(ValueError):
    """A resource profile that cannot be used, with what to fix."""


def parse_memory(value: object) -> int:
    """Bytes from an int or a string like ``"512M"``, ``"2G"`` or ``"2Gi"`` (1024-based)."""
    if isinstance(value, bool):
        raise InvalidProfile(f"memory must be bytes or a size like '2G', got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and (match := _MEMORY_RE.fullmatch(value)):
        number = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    else:
        raise InvalidProfile(f"memory must be bytes or a size like '2G', got {value!r}")
    if number <= 0:
        raise InvalidProfile(f"memory must be positive, got {value!r}")
    return number


def parse_profile(raw: object) -> dict:
    """Validate one configured profile and return it normalised (memory in bytes)."""
    if not isinstance(raw, dict):
        raise InvalidProfile(f"each resource profile must be a dict, got {raw!r}")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise InvalidProfile(f"resource profile has unknown field(s) {unknown}")
    try:
        name = validate_name(raw.get("name"))
    except InvalidName as e:
        raise InvalidProfile(f"resource profile {raw.get('name')!r}: {e}") from None
    cpu = raw.get("cpu", 1)
    if isinstance(cpu, bool) or not isinstance(cpu, int | float) or cpu <= 0:
        raise InvalidProfile(f"resource profile {name!r}: cpu must be a positive number")
    gpu = raw.get("gpu", 0)
    if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
        raise InvalidProfile(f"resource profile {name!r}: gpu must be a non-negative integer")
    groups = raw.get("groups", [])
    if not isinstance(groups, list | tuple) or not all(isinstance(g, str) for g in groups):
        raise InvalidProfile(f"resource profile {name!r}: groups must be a list of group names")
    display_name = raw.get("display_name", name)
    if not isinstance(display_name, str):
        raise InvalidProfile(f"resource profile {name!r}: display_name must be a string")
    try:
        memory = parse_memory(raw.get("memory", "2G"))
    except InvalidProfile as e:
        raise InvalidProfile(f"resource profile {name!r}: {e}") from None
    return {
        "name": name,
        "display_name": display_name,
        "cpu": cpu,
        "memory": memory,
        "gpu": gpu,
        "groups": list(groups),
    }


def parse_profiles(raw: list) -> list[dict]:
    """Validate every profile; names must be unique."""
    profiles = [parse_profile(item) for item in raw]
    names = [p["name"] for p in profiles]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidProfile(f"resource profile names must be unique, repeated: {duplicates}")
    return profiles


def profiles_for(profiles: list[dict], groups: set[str]) -> list[dict]:
    """The profiles open to a member of `groups` (a profile with no groups is open to all)."""
    return [p for p in profiles if not p["groups"] or groups & set(p["groups"])]
