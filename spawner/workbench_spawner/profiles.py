"""Resource profiles as the control plane describes them, and choosing one for a session.

Shared by the local spawner and the Kubernetes spawner: both receive the profiles a user may
use from ``spawn-options`` and pick one by name.
"""

import math
from dataclasses import dataclass

from workbench_hub.profiles import InvalidProfile, parse_memory

_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}

#: A profile that cannot be read or used; the message says what to fix.
ProfileError = InvalidProfile

__all__ = ["Profile", "ProfileError", "format_memory", "parse_memory", "select_profile"]


def format_memory(number: int) -> str:
    """A short human size: ``2 GiB``, ``512 MiB``."""
    for unit in ("T", "G", "M", "K"):
        if number >= _UNITS[unit]:
            return f"{number / _UNITS[unit]:.3g} {unit}iB"
    return f"{number} B"


@dataclass(frozen=True)
class Profile:
    """One resource profile: CPU cores (may be fractional), memory in bytes, GPUs."""

    name: str
    display_name: str
    cpu: float
    memory: int
    gpu: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        """Read a profile from the control plane's JSON (memory may also be a size string)."""
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise ProfileError(f"a resource profile needs a name, got {data!r}")
        cpu = data.get("cpu", 1)
        if isinstance(cpu, bool) or not isinstance(cpu, int | float) or cpu <= 0:
            raise ProfileError(f"profile {name!r}: cpu must be a positive number, got {cpu!r}")
        gpu = data.get("gpu", 0)
        if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
            raise ProfileError(f"profile {name!r}: gpu must be a whole number ≥ 0, got {gpu!r}")
        try:
            memory = parse_memory(data.get("memory"))
        except ProfileError as e:
            raise ProfileError(f"profile {name!r}: {e}") from None
        display_name = data.get("display_name") or name
        return cls(name, str(display_name), float(cpu), memory, gpu)

    @property
    def cores(self) -> int:
        """Whole cores needed to hold ``cpu``: 0.5 → 1, 2 → 2, 2.5 → 3."""
        return math.ceil(self.cpu)

    @property
    def summary(self) -> str:
        """``2 CPU · 4 GiB`` (and ``· 1 GPU`` when it has GPUs)."""
        text = f"{self.cpu:g} CPU · {format_memory(self.memory)}"
        return f"{text} · {self.gpu} GPU" if self.gpu else text


def select_profile(allowed: list[Profile], name: str | None) -> Profile:
    """The allowed profile called `name`, or the first allowed one when `name` is empty."""
    if not allowed:
        raise ProfileError("No resource profile is available to you; ask an administrator.")
    if not name:
        return allowed[0]
    for profile in allowed:
        if profile.name == name:
            return profile
    choices = ", ".join(p.name for p in allowed)
    raise ProfileError(f"Profile {name!r} is not available to you. Choose one of: {choices}.")
