"""The API document and the control plane agree: schemathesis against a real `workbench up`.

Every operation of the served openapi.json gets generated requests, valid ones and ones the
document forbids, with a real user's token. Each answer must pass schemathesis' checks: no
5xx; a documented status, content type, headers and body; forbidden requests refused and
valid ones accepted; 405 with ``Allow`` for methods a path lacks; 401 without the token.
Half the project, job and model names drawn are those of a seeded project, so requests also
reach objects that exist. A run takes two to three minutes on two cores.
"""

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    RejectedPositiveData,
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tests.hub.conftest import EXTRA_CONFIG, Api, openapi
from workbench_hub.projects import list_templates

#: Schema-valid requests the server may refuse with a 400 naming one of these fields, for what a
#: JSON Schema cannot state: the project's files, the hub's users and groups, the configuration
#: (profiles, git transports), cron syntax and time zones, one field against another (confirm
#: equals the name, start before end, arguments for scripts only) and integers beyond 64 bits
#: deep in metrics, which the metrics store cannot hold.
STATE_CHECKS = {
    "createProject": {"owner", "git_url"},
    "deleteProject": {"confirm"},
    "createJob": {"target", "arguments", "parameters", "profile", "parent", "cron", "timezone"},
    "updateJob": {"target", "arguments", "parameters", "profile", "parent", "cron", "timezone"},
    "createModel": {"file", "profile"},
    "updateModel": {"file", "profile"},
    "readModelMetrics": {"deploymentCrn", "startTimeStampMs"},
    "trackDelayedMetrics": {"metrics", "records"},
    "trackAggregateMetrics": {"endTimeStampMs", "metrics"},
}
#: Its credential is in the body, so it answers 401 to any method, before the method is known.
NOT_CHECKED = {"resolveAccessKey": unsupported_method}
SEEDED = {"name": "fuzz", "job": "job", "model": "model"}


def operation_id(case) -> str:
    return case.operation.definition.raw["operationId"]


def valid_data_accepted(ctx, response, case):
    """`positive_data_acceptance`, except for the refusals `STATE_CHECKS` allows."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        field = response.json().get("field") if response.status_code == 400 else None
        if field not in STATE_CHECKS.get(operation_id(case), ()):
            raise
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    valid_data_accepted,
    missing_required_header,
    unsupported_method,
    allow_header_conformance,
    ignored_auth,
]


@pytest.fixture(scope="module")
def fuzzed(workbench_factory):
    """A workbench (SQLite) with a user's project holding a script, a job and a model."""
    wb = workbench_factory(extra_config=EXTRA_CONFIG)
    token = wb.user_token("fuzzer")
    api = Api(wb.api_url, token)
    path = Path(api("POST", "/projects", 201, json={"name": SEEDED["name"]})["path"])
    (path / "script.py").write_text("print('hello')\n")
    (path / "model.py").write_text("def predict(args):\n    return args\n")
    jobs, models = f"/projects/{SEEDED['name']}/jobs", f"/projects/{SEEDED['name']}/models"
    api("POST", jobs, 201, json={"name": SEEDED["job"], "target": "script.py"})
    api("POST", f"{jobs}/{SEEDED['job']}/runs", 201)
    model = {"name": SEEDED["model"], "file": "model.py", "function": "predict"}
    api("POST", models, 201, json=model)
    api("POST", f"{models}/{SEEDED['model']}/keys", 201, json={"description": "seeded"})
    return wb, token


@pytest.fixture(scope="module")
def api_schema(fuzzed):
    wb, token = fuzzed
    seeded = {f"path.{name}": {"dictionary": name, "probability": 0.5} for name in SEEDED}
    never_seeded = {f"path.{name}": {"dictionary": name, "probability": 0.0} for name in SEEDED}
    config = schemathesis.Config.from_dict(
        {
            "seed": 11,
            "base-url": wb.api_url,
            "headers": {"Authorization": f"token {token}"},
            "request-timeout": 60,
            # string fields never hold NUL (openapi.yaml's info)
            "generation": {"max-examples": 50, "allow-x00": False, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
            "dictionaries": {name: {"values": [value]} for name, value in SEEDED.items()},
            "parameters": seeded,
            "operations": [
                # the seeded objects must outlive the run; builds are slow
                {
                    "include-operation-id": ["deleteJob", "deleteModel", "startModelBuild"],
                    "parameters": never_seeded,
                },
            ],
        }
    )
    return schemathesis.openapi.from_url(
        f"{wb.api_url}/openapi.json", config=config, headers={"Authorization": f"token {token}"}
    )


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_document(case):
    skipped = NOT_CHECKED.get(operation_id(case))
    case.call_and_validate(checks=[check for check in CHECKS if check is not skipped])


def test_templates_are_documented():
    """The document's template enum is the built-in templates (and `empty`)."""
    documented = openapi()["components"]["schemas"]["ProjectCreate"]["properties"]["template"]
    assert documented["enum"] == ["empty", *(t["name"] for t in list_templates())]
