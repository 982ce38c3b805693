"""Limits as a session's processes feel them: checked from inside real child processes."""

import json
import os
import subprocess
import sys

import pytest

from workbench_spawner.limits import choose_cpus, limits_env, make_limits_preexec
from workbench_spawner.profiles import Profile

MiB = 2**20

#: Reports its limits, then those of a grandchild (a kernel would be one), then tries to
#: allocate 1 GiB, as a notebook would.
CHILD = """
import json, os, resource, subprocess, sys
grandchild = subprocess.run(
    [sys.executable, "-c", "import os, resource; "
     "print(resource.getrlimit(resource.RLIMIT_AS)[0], sorted(os.sched_getaffinity(0)))"],
    capture_output=True, text=True, check=True,
).stdout.split(" ", 1)
try:
    block = bytearray(1024 ** 3)
    allocated = True
except MemoryError:
    allocated = False
print(json.dumps({
    "rlimit_as": resource.getrlimit(resource.RLIMIT_AS),
    "cpus": sorted(os.sched_getaffinity(0)),
    "grandchild": [int(grandchild[0]), json.loads(grandchild[1])],
    "allocated_1gib": allocated,
    "cwd": os.getcwd(),
}))
"""


def run_child(preexec) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        preexec_fn=preexec,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return json.loads(out.stdout)


def test_preexec_caps_memory_and_cpus_of_the_whole_tree(tmp_path):
    cpus = {min(os.sched_getaffinity(0))}
    seen = run_child(make_limits_preexec(512 * MiB, cpus, then=lambda: os.chdir(tmp_path)))
    assert seen["rlimit_as"] == [512 * MiB, 512 * MiB]
    assert seen["cpus"] == sorted(cpus)
    assert seen["grandchild"] == [512 * MiB, sorted(cpus)]
    assert seen["allocated_1gib"] is False
    assert seen["cwd"] == str(tmp_path)


def test_without_limits_the_same_child_can_allocate():
    assert run_child(None)["allocated_1gib"] is True


def test_choose_cpus_counts_whole_cores_within_what_exists():
    machine = set(range(8))
    assert len(choose_cpus(1, "ana/demo", machine)) == 1
    assert len(choose_cpus(3, "ana/demo", machine)) == 3
    assert choose_cpus(64, "ana/demo", machine) == machine
    assert choose_cpus(2, "ana/demo", machine) == choose_cpus(2, "ana/demo", machine)
    assert choose_cpus(1, "ana/demo", {5}) == {5}


def test_choose_cpus_spreads_sessions_over_the_machine():
    machine = set(range(8))
    firsts = {frozenset(choose_cpus(1, f"ana/project-{i}", machine)) for i in range(40)}
    assert len(firsts) >= 6


def test_choose_cpus_defaults_to_the_hubs_cpus():
    assert choose_cpus(1, "ana/demo") <= os.sched_getaffinity(0)


@pytest.mark.parametrize(("gpu", "hidden"), [(0, True), (1, False)])
def test_limits_env(gpu, hidden):
    env = limits_env(Profile("p", "p", 2, 2**30, gpu=gpu), {0, 1})
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["MALLOC_ARENA_MAX"] == "2"
    assert (env.get("CUDA_VISIBLE_DEVICES") == "") is hidden
