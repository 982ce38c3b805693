"""Object names: DNS-1123 labels, because they become directory, server and Kubernetes names."""

import re

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MAX_NAME_LENGTH = 63
_NAME_RE = re.compile(NAME_PATTERN)


class InvalidName(ValueError):
    """A name that is not a DNS-1123 label."""


def validate_name(name: object) -> str:
    """Return `name` if it is a DNS-1123 label, else raise InvalidName saying what to fix."""
    if not isinstance(name, str) or not name:
        raise InvalidName("name must be a non-empty string")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"name must be at most {MAX_NAME_LENGTH} characters, got {len(name)}")
    if not _NAME_RE.fullmatch(name):
        raise InvalidName(
            f"name {name!r} must use only lowercase letters, digits and '-',"
            " and start and end with a letter or digit"
        )
    return name
