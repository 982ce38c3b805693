"""Model metrics through a real `workbench up`: replicas post, users track and read."""

import time

import httpx
import orjson
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from tests.hub import conftest as hub
from tests.hub.conftest import Api, check_against_openapi, unique
from tests.models.rows import build_row, deployment_row, model_row
from workbench_hub.db import sync_url
from workbench_hub.models import new_crn
from workbench_hub.orm import ModelDeployment, ModelMetric, Project

# the real workbench (SQLite, then PostgreSQL) and its API clients of tests/hub
wb, admin, user = hub.wb, hub.admin, hub.user


class Deployment:
    """A model, build and deployment made directly in the workbench's database."""

    def __init__(self, wb, project: str, builds: int = 1, per_build: int = 1) -> None:
        url = wb.db_url or f"sqlite:///{wb.data_dir / 'workbench.sqlite'}"
        self.engine = create_engine(sync_url(url))
        with Session(self.engine) as session:
            project_id = session.scalar(select(Project.id).where(Project.name == project))
            model = model_row(project_id, name=unique("model"))
            session.add(model)
            session.flush()
            self.model_crn = model.crn
            self.builds, self.deployments, self.tokens = [], [], []
            for b in range(builds):
                build = build_row(model, number=b + 1)
                session.add(build)
                session.flush()
                self.builds.append(build.crn)
                for _ in range(per_build):
                    token = f"deployment-token-{unique('t')}"
                    deployment = deployment_row(
                        model.id, build.id, number=len(self.deployments) + 1, token=token
                    )
                    session.add(deployment)
                    self.deployments.append(deployment.crn)
                    self.tokens.append(token)
            session.commit()
        self.crn, self.token = self.deployments[0], self.tokens[0]

    def rows(self) -> int:
        with Session(self.engine) as session:
            return session.scalar(
                select(func.count())
                .select_from(ModelMetric)
                .join(ModelDeployment, ModelDeployment.id == ModelMetric.deployment_id)
                .where(ModelDeployment.crn.in_(self.deployments))
            )

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def project(user):
    """A new project of alice's, with bob as viewer and carol as contributor."""
    alice = user("alice")
    user("bob"), user("carol"), user("mallory")
    name = unique("metrics")
    alice("POST", "/projects", 201, json={"name": name})
    alice("PUT", f"/projects/{name}/collaborators/bob", 200, json={"role": "viewer"})
    alice("PUT", f"/projects/{name}/collaborators/carol", 200, json={"role": "contributor"})
    return name


@pytest.fixture
def deployment(wb, project):
    made = Deployment(wb, project)
    yield made
    made.close()


def replica(wb, crn: str, token: str | None, body, expect: int) -> dict | None:
    """POST predictions as a replica; checks the answer like `Api` does."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    path = f"/deployments/{crn}/predictions"
    response = httpx.post(wb.api_url + path, headers=headers, content=content, timeout=120)
    assert response.status_code == expect, response.text
    if expect == 204:
        assert not response.content
        return None
    body = response.json()
    assert set(body) in ({"status", "message"}, {"status", "message", "field"}), body
    assert body["status"] == expect
    check_against_openapi("POST", path, response)
    return body


def now_ms() -> int:
    return int(time.time() * 1000)


def records(count: int, start: int, prefix: str = "p") -> list[list]:
    return [
        [
            f"{prefix}-{i:06d}-{start % 1000:03d}",
            start + i,
            start + i + 3,
            {"probability": i / count, "label": ["a", "b"][i % 2], "input": {"x": [i, 0.5]}},
        ]
        for i in range(count)
    ]


def read(client: Api, expect: int = 200, **params) -> dict:
    return client("GET", "/model-metrics", expect, params=params)


def as_read(record: list, extra: dict | None = None) -> dict:
    uuid, start, end, metrics = record
    return {
        "startTimeStampMs": start,
        "endTimeStampMs": end,
        "predictionUuid": uuid,
        "metrics": {**metrics, **(extra or {})},
    }


def test_replica_ingest_then_track_and_read_metrics(wb, user, deployment):
    alice = user("alice")
    start = now_ms() - 600_000
    posted = records(2000, start)
    replica(wb, deployment.crn, deployment.token, {"records": posted[:1500]}, 204)
    replica(wb, deployment.crn, deployment.token, {"records": posted[1500:]}, 204)
    replica(wb, deployment.crn, deployment.token, {"records": []}, 204)

    one = alice(
        "POST",
        "/model-metrics/delayed",
        201,
        json={"predictionUuid": posted[0][0], "metrics": {"actual": "b", "probability": 1.0}},
    )
    assert one == {"predictionUuid": posted[0][0], "deploymentCrn": deployment.crn}
    many = alice(
        "POST",
        "/model-metrics/delayed",
        201,
        json={
            "records": [{"predictionUuid": r[0], "metrics": {"actual": "a"}} for r in posted[:4]]
        },
    )
    assert many == {
        "records": [{"predictionUuid": r[0], "deploymentCrn": deployment.crn} for r in posted[:4]]
    }
    aggregate = {
        "deploymentCrn": deployment.crn,
        "startTimeStampMs": start + 10,
        "endTimeStampMs": start + 20,
        "metrics": {"accuracy": 0.75, "matrix": [[1, 2], [3, 4]]},
    }
    assert alice("POST", "/model-metrics/aggregate", 201, json=aggregate) == aggregate

    expected = [
        as_read(posted[0], {"actual": "a", "probability": 1.0}),
        *[as_read(r, {"actual": "a"}) for r in posted[1:4]],
        *[as_read(r) for r in posted[4:]],
    ]
    expected.insert(
        11,
        {
            "startTimeStampMs": start + 10,
            "endTimeStampMs": start + 20,
            "predictionUuid": None,
            "metrics": aggregate["metrics"],
        },
    )
    assert read(alice, deploymentCrn=deployment.crn) == {"metrics": expected}
    paged, offset = [], 0
    while offset is not None:  # pages only when asked, delayed metrics merged in each
        page = read(alice, deploymentCrn=deployment.crn, limit="5", offset=str(offset))
        paged += page["metrics"]
        offset = page["next"] and page["next"]["offset"]
    assert paged == expected
    assert read(alice, modelCrn=deployment.model_crn)["metrics"] == expected
    assert read(alice, buildCrn=deployment.builds[0])["metrics"] == expected
    window = read(
        alice,
        deploymentCrn=deployment.crn,
        startTimeStampMs=str(start + 100),
        endTimeStampMs=str(start + 199),
    )
    assert window["metrics"] == expected[101:201]
    assert read(alice, deploymentCrn=deployment.crn, endTimeStampMs=str(start - 1)) == {
        "metrics": []
    }


def test_model_and_build_read_all_their_deployments(wb, user, project):
    alice = user("alice")
    made = Deployment(wb, project, builds=2, per_build=2)
    try:
        start = now_ms() - 60_000
        per = {}
        for n, (crn, token) in enumerate(zip(made.deployments, made.tokens, strict=True)):
            per[crn] = records(3, start + n * 100, prefix=f"d{n}")
            replica(wb, crn, token, {"records": per[crn]}, 204)
        everything = [as_read(r) for crn in made.deployments for r in per[crn]]
        assert read(alice, modelCrn=made.model_crn)["metrics"] == everything
        assert read(alice, buildCrn=made.builds[1])["metrics"] == everything[6:]
        assert (
            read(alice, buildCrn=made.builds[0], modelCrn=made.model_crn)["metrics"]
            == (everything[:6])
        )
        assert read(alice, deploymentCrn=made.deployments[3])["metrics"] == everything[9:]
        message = alice.error(
            "GET",
            "/model-metrics",
            400,
            field="deploymentCrn",
            params={"deploymentCrn": made.deployments[3], "buildCrn": made.builds[0]},
        )
        assert made.deployments[3] in message and made.builds[0] in message
    finally:
        made.close()


def test_roles_decide_who_reads_and_who_writes(wb, user, admin, deployment):
    bob, carol, mallory = user("bob"), user("carol"), user("mallory")
    start = now_ms() - 60_000
    posted = records(3, start)
    replica(wb, deployment.crn, deployment.token, {"records": posted}, 204)
    aggregate = {
        "deploymentCrn": deployment.crn,
        "startTimeStampMs": start,
        "endTimeStampMs": start + 1,
        "metrics": {"n": 1},
    }
    delayed = {"predictionUuid": posted[1][0], "metrics": {"actual": 1}}

    # a viewer reads but does not write
    assert len(read(bob, deploymentCrn=deployment.crn)["metrics"]) == 3
    assert "viewer" in bob.error("POST", "/model-metrics/delayed", 403, json=delayed)
    assert "viewer" in bob.error("POST", "/model-metrics/aggregate", 403, json=aggregate)
    events = admin("GET", "/audit", 200, params={"actor": "bob"})["events"]
    assert [e["outcome"] for e in events if e["object_id"] == deployment.crn] == ["denied"] * 2

    # a contributor writes
    carol("POST", "/model-metrics/delayed", 201, json=delayed)
    carol("POST", "/model-metrics/aggregate", 201, json=aggregate)
    events = admin("GET", "/audit", 200, params={"action": "model.metrics.aggregate"})["events"]
    assert [e["actor"] for e in events if e["object_id"] == deployment.crn] == ["carol"]

    # someone with no role learns nothing: the same 404 as for objects that do not exist
    before = deployment.rows()
    for parameter, crn in (
        ("deploymentCrn", deployment.crn),
        ("modelCrn", deployment.model_crn),
        ("buildCrn", deployment.builds[0]),
    ):
        message = mallory.error("GET", "/model-metrics", 404, params={parameter: crn})
        assert crn in message
    assert posted[1][0] in mallory.error("POST", "/model-metrics/delayed", 404, json=delayed)
    batch = {"records": [{"predictionUuid": posted[1][0], "metrics": {}}]}
    assert posted[1][0] in mallory.error("POST", "/model-metrics/delayed", 404, json=batch)
    assert deployment.crn in mallory.error("POST", "/model-metrics/aggregate", 404, json=aggregate)
    assert deployment.rows() == before


def test_unknown_objects_are_404(user, deployment):
    alice = user("alice")
    ghost = new_crn("deployment")
    for parameter, crn in (
        ("deploymentCrn", ghost),
        ("modelCrn", new_crn("model")),
        ("buildCrn", new_crn("build")),
    ):
        assert crn in alice.error("GET", "/model-metrics", 404, params={parameter: crn})
    message = alice.error(
        "POST",
        "/model-metrics/aggregate",
        404,
        json={"deploymentCrn": ghost, "startTimeStampMs": 1, "endTimeStampMs": 2, "metrics": {}},
    )
    assert ghost in message
    message = alice.error(
        "POST", "/model-metrics/delayed", 404, json={"predictionUuid": "nope", "metrics": {}}
    )
    assert "'nope'" in message


def test_replica_authentication(wb, project, deployment):
    other = Deployment(wb, project)
    try:
        body = {"records": records(1, now_ms())}
        replica(wb, deployment.crn, None, body, 401)
        replica(wb, deployment.crn, "wrong-token", body, 401)
        replica(wb, deployment.crn, other.token, body, 401)  # another deployment's token
        replica(wb, new_crn("deployment"), deployment.token, body, 401)
        # a hub token is not a deployment token
        r = httpx.post(
            f"{wb.api_url}/deployments/{deployment.crn}/predictions",
            headers={"Authorization": f"token {wb.admin_token}"},
            content=orjson.dumps(body),
            timeout=60,
        )
        assert r.status_code == 401
        assert deployment.rows() == 0
    finally:
        other.close()


def test_bad_input_is_400_and_writes_nothing(wb, user, deployment):
    alice = user("alice")
    crn, token = deployment.crn, deployment.token
    start = now_ms() - 60_000
    good = records(10, start)

    assert "JSON" in replica(wb, crn, token, b"{not json", 400)["message"]
    assert "object" in replica(wb, crn, token, b"[1, 2]", 400)["message"]
    assert replica(wb, crn, token, {"records": good, "extra": 1}, 400)["field"] == "extra"
    assert replica(wb, crn, token, {}, 400)["field"] == "records"
    bad = [*good[:7], [good[7][0], start, start - 1, {}], *good[8:]]
    error = replica(wb, crn, token, {"records": bad}, 400)
    assert "records[7]" in error["message"] and "endTimeStampMs" in error["message"]
    bad = [*good[:3], [good[3][0], start, start, ["not", "a", "dict"]]]
    assert "records[3]: metrics" in replica(wb, crn, token, {"records": bad}, 400)["message"]
    too_many = {"records": [["u", 1, 1, {}]] * 50_001}
    assert "50000" in replica(wb, crn, token, too_many, 413)["message"]
    assert deployment.rows() == 0

    for path in ("/model-metrics/delayed", "/model-metrics/aggregate"):
        assert "JSON" in alice.error("POST", path, 400, content=b"{nope")
    replica(wb, crn, token, {"records": good}, 204)
    rows = deployment.rows()

    alice.error("POST", "/model-metrics/delayed", 400, field="predictionUuid", json={"metrics": {}})
    message = alice.error(
        "POST",
        "/model-metrics/delayed",
        400,
        field="predictionUuid",
        json={"predictionUuid": "x" * 37, "metrics": {}},
    )
    assert "36" in message
    alice.error(
        "POST",
        "/model-metrics/delayed",
        400,
        field="metrics",
        json={"predictionUuid": good[0][0], "metrics": [1]},
    )
    message = alice.error(
        "POST",
        "/model-metrics/delayed",
        400,
        field="records",
        json={"records": [{"predictionUuid": good[0][0], "metrics": {}}, {"metrics": {}}]},
    )
    assert "records[1]" in message
    too_many = {"records": [{"predictionUuid": "u", "metrics": {}}] * 50_001}
    assert "50000" in alice.error(
        "POST", "/model-metrics/delayed", 413, field="records", json=too_many
    )
    message = alice.error(
        "POST",
        "/model-metrics/delayed",
        404,
        json={
            "records": [
                {"predictionUuid": good[0][0], "metrics": {"a": 1}},
                {"predictionUuid": "missing-uuid", "metrics": {}},
            ]
        },
    )
    assert "missing-uuid" in message
    aggregate = {
        "deploymentCrn": crn,
        "startTimeStampMs": start + 5,
        "endTimeStampMs": start,
        "metrics": {"accuracy": 1},
    }
    message = alice.error(
        "POST", "/model-metrics/aggregate", 400, field="endTimeStampMs", json=aggregate
    )
    assert str(start) in message and str(start + 5) in message
    aggregate.update(startTimeStampMs=-1)
    alice.error("POST", "/model-metrics/aggregate", 400, field="startTimeStampMs", json=aggregate)
    aggregate.update(startTimeStampMs=True)
    alice.error("POST", "/model-metrics/aggregate", 400, field="startTimeStampMs", json=aggregate)
    del aggregate["metrics"]
    alice.error("POST", "/model-metrics/aggregate", 400, field="metrics", json=aggregate)
    assert deployment.rows() == rows

    # reading
    assert "deploymentCrn" in alice.error("GET", "/model-metrics", 400, field="deploymentCrn")
    message = alice.error(
        "GET",
        "/model-metrics",
        400,
        field="startTimeStampMs",
        params={"deploymentCrn": crn, "startTimeStampMs": "20", "endTimeStampMs": "10"},
    )
    assert "startTimeStampMs (20)" in message and "endTimeStampMs (10)" in message
    for value in ("-1", "1.5", "soon", "1e3"):
        alice.error(
            "GET",
            "/model-metrics",
            400,
            field="endTimeStampMs",
            params={"deploymentCrn": crn, "endTimeStampMs": value},
        )
    assert [r["predictionUuid"] for r in read(alice, deploymentCrn=crn)["metrics"]] == [
        r[0] for r in good
    ]


def test_every_metrics_route_needs_authentication(wb, deployment):
    anonymous = Api(wb.api_url, token=None)
    routes = [
        "/model-metrics",
        "/model-metrics/delayed",
        "/model-metrics/aggregate",
        f"/deployments/{deployment.crn}/predictions",
    ]
    for route in routes:
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            response = anonymous.raw(method, route, content=b"{}")
            assert response.status_code == 401, (method, route, response.status_code)
            assert response.json()["status"] == 401
    # a deployment token is no hub token
    bearer = httpx.get(
        f"{wb.api_url}/model-metrics",
        params={"deploymentCrn": deployment.crn},
        headers={"Authorization": f"Bearer {deployment.token}"},
        timeout=60,
    )
    assert bearer.status_code == 401
