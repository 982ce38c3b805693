"""WorkloadSpec validation: invalid specs are refused with a ValueError naming the problem."""

import pytest

from workbench_hub.runtime.base import Resources, VolumeMount, WorkloadSpec

VALID = {
    "name": "run-1",
    "kind": "job-run",
    "user": "alice@example.org",
    "project": "demo",
    "command": ["python", "train.py"],
    "working_dir": "/home/workbench/project",
}


def test_valid_spec_has_standard_labels():
    spec = WorkloadSpec(**VALID, labels={"example.org/job": "nightly", "empty": ""})
    assert spec.all_labels() == {
        "example.org/job": "nightly",
        "empty": "",
        "workbench.jupyter.org/kind": "job-run",
        "workbench.jupyter.org/project": "demo",
    }


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"name": "Run_1"}, "name 'Run_1' is invalid"),
        ({"name": "-run"}, "name '-run' is invalid"),
        ({"name": "a" * 64}, "is invalid"),
        ({"name": ""}, "is invalid"),
        ({"kind": "daemon"}, "kind 'daemon' is invalid"),
        ({"user": ""}, "user"),
        ({"project": "My Project"}, "project 'My Project' is invalid"),
        ({"command": []}, "command"),
        ({"command": "python train.py"}, "command"),
        ({"command": ["python", 3]}, "command"),
        ({"command": [""]}, "command"),
        ({"working_dir": "relative/dir"}, "working_dir"),
        ({"env": {"1ABC": "x"}}, "environment variable name"),
        ({"env": {"A": 1}}, "environment variable A"),
        ({"labels": {"bad key!": "x"}}, "label key"),
        ({"labels": {"Bad.Prefix/k": "x"}}, "prefix"),
        ({"labels": {"k": "x" * 64}}, "value"),
        ({"labels": {"k": "no spaces"}}, "value"),
        ({"ports": {"http": 0}}, "port http"),
        ({"ports": {"Http": 80}}, "port name"),
        ({"ports": {"a-very-long-port-name": 80}}, "use 1-15"),
        (
            {"volumes": [VolumeMount("a", "/data"), VolumeMount("b", "/data/")]},
            "same target",
        ),
    ],
)
def test_invalid_spec_raises(changes, match):
    with pytest.raises(ValueError, match=match):
        WorkloadSpec(**{**VALID, **changes})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cpu": 0}, "cpu"),
        ({"cpu": "2"}, "cpu"),
        ({"memory": -1}, "memory"),
        ({"memory": 1.5}, "memory"),
        ({"gpu": -1}, "gpu"),
    ],
)
def test_invalid_resources_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Resources(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"source": "", "target": "/data"}, "source"),
        ({"source": "pvc", "target": "data"}, "absolute"),
        ({"source": "pvc", "target": "/data", "sub_path": "../x"}, "sub_path"),
        ({"source": "pvc", "target": "/data", "sub_path": "/x"}, "sub_path"),
    ],
)
def test_invalid_volume_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VolumeMount(**kwargs)
