"""A real `python -m workbench_serving` process against the control-plane double.

What a caller and an operator notice: answers and their error codes, keys that stop working,
the 429 of a full queue, metrics and stats that reach the control plane (also across a
SIGTERM), exit statuses, and secrets kept out of the replica's output.
"""

import signal
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest

from tests.serving.conftest import KEY, PREFIX, command, free_port, replica_env
from tests.serving.control_plane import TOKEN

WRONG_KEY = "wbk_wrong_key_5e8d21"


@pytest.fixture(scope="module")
def replica(start_replica):
    """The plain function `predict`, bodies limited to 4 KiB."""
    return start_replica("predict", "--max-body-bytes", "4096")


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert body["success"] is False, body
    assert response.headers["content-type"] == "application/json"
    return body["error"]


def test_health_is_503_until_the_access_keys_arrive(control, start_replica):
    control.hold_keys()
    try:
        replica = start_replica("predict", wait=False)
        deadline = time.monotonic() + 30
        while True:
            assert replica.proc.poll() is None, replica.output()
            try:
                health = replica.http.get(f"{PREFIX}/health")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, replica.output()
                time.sleep(0.05)
        assert health.status_code == 503
        assert health.json()["status"] == "starting"
        assert replica.http.get("/health").status_code == 503
        assert replica.call({"x": 1}).status_code == 401  # no keys known yet
    finally:
        control.release_keys()
    replica.wait_ready(10)
    for path in (f"{PREFIX}/health", "/health"):
        answer = replica.http.get(path)
        assert (answer.status_code, answer.json()) == (200, {"status": "ready"})


def test_a_call_answers_the_result_and_a_prediction_uuid(replica):
    answers = [
        replica.call({"x": 1}),
        replica.http.post("/model", json={"accessKey": KEY, "request": 2}),
    ]
    for answer in answers:
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
    first, second = (a.json() for a in answers)
    assert first == {"success": True, "response": {"echo": {"x": 1}}, "uuid": first["uuid"]}
    assert second == {"success": True, "response": {"echo": 2}, "uuid": second["uuid"]}
    assert uuid.UUID(first["uuid"]).version == 4
    assert first["uuid"] != second["uuid"]


def test_numpy_results_are_json(replica):
    answer = replica.call({"numpy": 3})
    assert answer.status_code == 200
    assert answer.json()["response"] == {"values": [0, 2, 4], "mean": 0.5}


@pytest.mark.parametrize("field", ["inputs", "instances", "dataframe_records", "dataframe_split"])
def test_invocations_pass_the_input_field_to_the_function(replica, field):
    value = {"columns": ["a"], "data": [[1]]} if field == "dataframe_split" else [[1, 2], [3, 4]]
    answer = replica.http.post(
        f"{PREFIX}/invocations", json={field: value}, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert answer.status_code == 200
    assert answer.json() == {"predictions": {"echo": value}}


def test_invocations_need_the_key_and_an_input_field(replica):
    missing_key = replica.http.post(f"{PREFIX}/invocations", json={"inputs": [1]})
    assert missing_key.status_code == 401
    assert "Bearer" in error_of(missing_key)
    wrong = replica.http.post(
        "/invocations", json={"inputs": [1]}, headers={"Authorization": f"Bearer {WRONG_KEY}"}
    )
    assert (wrong.status_code, error_of(wrong)) == (401, "invalid access key")
    no_field = replica.http.post(
        "/invocations", json={"data": [1]}, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert no_field.status_code == 400
    assert "inputs, instances, dataframe_records, dataframe_split" in error_of(no_field)


def test_bodies_that_are_not_a_call_are_400(replica):
    url = f"{PREFIX}/model"
    not_json = replica.http.post(url, content=b"{nope")
    assert (not_json.status_code, error_of(not_json)) == (400, "the body is not JSON")
    array = replica.http.post(url, json=[KEY, 1])
    assert array.status_code == 400
    assert "JSON object" in error_of(array)
    no_request = replica.http.post(url, json={"accessKey": KEY})
    assert no_request.status_code == 400
    assert 'no "request"' in error_of(no_request)


def test_calls_without_a_valid_key_are_401(replica):
    missing = replica.http.post(f"{PREFIX}/model", json={"request": 1})
    assert (missing.status_code, error_of(missing)) == (401, 'the body has no "accessKey"')
    wrong = replica.call(1, key=WRONG_KEY)
    assert (wrong.status_code, error_of(wrong)) == (401, "invalid access key")
    not_a_string = replica.call(1, key=["wbk"])
    assert not_a_string.status_code == 401


def test_a_revoked_key_is_refused_as_soon_as_the_long_poll_answers(replica, control):
    other = "wbk_second_key_77a0b3"
    control.add_key(other)
    control.wait_for(lambda: replica.call(1, key=other).status_code == 200, 5, "the new key")
    polls = [r for r in control.requests if "access-keys" in r[1]]
    assert "wait=30" in polls[-1][1]  # the replica is waiting on a long poll
    revoked_at = time.monotonic()
    control.revoke_key(other)
    control.wait_for(lambda: replica.call(1, key=other).status_code == 401, 5, "the revocation")
    # the poll waits 30 s: only the answer the revocation caused can be this quick
    assert time.monotonic() - revoked_at < 2
    assert replica.call(1).status_code == 200  # the other key still works


def test_bodies_over_the_limit_are_413(replica):
    limit = 4096
    too_big = replica.call("x" * limit)
    assert too_big.status_code == 413
    assert error_of(too_big) == f"the body is larger than {limit} bytes"

    def chunks():  # no Content-Length: the limit is found while reading
        for _ in range(8):
            yield b"x" * 1000

    chunked = replica.http.post(f"{PREFIX}/model", content=chunks())
    assert chunked.status_code == 413
    fits = replica.call("x" * (limit - 100))
    assert fits.status_code == 200  # and the connection is still usable
    assert fits.json()["response"] == {"echo": "x" * (limit - 100)}


def test_a_failing_function_is_500_with_the_exception(replica):
    failed = replica.call({"raise": "the input has no tenure"})
    assert failed.status_code == 500
    assert error_of(failed) == "ValueError: the input has no tenure"
    not_json = replica.call({"object": True})
    assert not_json.status_code == 500
    assert "cannot be encoded as JSON" in error_of(not_json)
    untracked = replica.call({"track": True})
    assert untracked.status_code == 500
    assert "inside a function decorated with model_metrics" in error_of(untracked)
    output = replica.output()
    assert "Traceback (most recent call last)" in output
    assert "ValueError: the input has no tenure" in output


def test_stats_count_what_happened(control, start_replica):
    replica = start_replica("predict", "--replica", "mdl-stats")
    assert replica.call(1).status_code == 200
    assert replica.call({"numpy": 2}).status_code == 200
    assert replica.call({"raise": "x"}).status_code == 500
    assert replica.call(1, key=WRONG_KEY).status_code == 401
    assert replica.http.post("/invocations", json={"inputs": 1}).status_code == 401
    assert replica.http.post("/model", content=b"[").status_code == 400

    def posted():
        for body in reversed(control.stats):
            if body["replica"] == "mdl-stats" and body["stats"]["requests"] == 3:
                return body["stats"]
        return None

    stats = control.wait_for(posted, 10, "a stats post counting 3 requests")
    assert {
        k: stats[k] for k in ("requests", "errors", "rejected", "unauthorized", "inflight")
    } == {
        "requests": 3,
        "errors": 1,
        "rejected": 0,
        "unauthorized": 2,
        "inflight": 0,
    }
    bounds = [0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]
    assert stats["latency_bounds_ms"] == bounds
    assert len(stats["latency_counts"]) == 15 and sum(stats["latency_counts"]) == 3
    assert 0 < stats["latency_sum_ms"] < 3000
    assert stats["cpu_seconds"] > 0
    assert stats["memory_bytes"] > 10 * 2**20
    assert time.time() - 120 < stats["started"] <= time.time()


def test_a_full_queue_answers_429(start_replica, control, tmp_path):
    replica = start_replica("predict", "--queue-limit", "1", "--replica", "mdl-queue")
    marker = tmp_path / "running"
    slow = {}
    thread = threading.Thread(
        target=lambda: slow.update(answer=replica.call({"sleep": 1.5, "marker": str(marker)}))
    )
    thread.start()
    control.wait_for(marker.exists, 10, "the slow call to start")
    sent = time.monotonic()
    refused = replica.call({"x": 1})
    assert refused.status_code == 429
    assert time.monotonic() - sent < 0.5  # answered while the slow call runs
    assert "busy" in error_of(refused)
    assert replica.http.get("/health").status_code == 200
    thread.join(10)
    assert slow["answer"].status_code == 200
    assert replica.call({"x": 2}).status_code == 200  # room again

    # After many fast calls, calls may run on the event loop's thread (runner.SyncRunner); a
    # call with an unusually large body still goes to the worker, so the loop keeps answering.
    for x in range(60):
        assert replica.call({"x": x}).status_code == 200
    marker.unlink()
    big = {"sleep": 1.5, "marker": str(marker), "rows": [[0.5] * 8] * 100}
    thread = threading.Thread(target=lambda: slow.update(answer=replica.call(big)))
    thread.start()
    control.wait_for(marker.exists, 10, "the slow call to start")
    sent = time.monotonic()
    assert replica.call({"x": 1}).status_code == 429
    assert time.monotonic() - sent < 0.5
    thread.join(10)
    assert slow["answer"].status_code == 200

    def posted():
        bodies = [b["stats"] for b in control.stats if b["replica"] == "mdl-queue"]
        return bodies and bodies[-1]["requests"] == 63 and bodies[-1]

    stats = control.wait_for(posted, 10, "stats with every call")
    assert stats["rejected"] == 2


@pytest.mark.parametrize("function", ["scored", "scored_cml"])
def test_tracked_metrics_reach_the_control_plane_with_the_callers_uuid(
    start_replica, control, function
):
    replica = start_replica(function)
    before = time.time() * 1000
    answers = [replica.call({"x": x}).json() for x in (1, 2, 3)]
    after = time.time() * 1000
    for x, answer in zip((1, 2, 3), answers, strict=True):
        assert answer == {
            "success": True,
            "response": {"uuid": answer["uuid"], "prediction": 2 * x},
            "uuid": answer["uuid"],
        }
    uuids = [a["uuid"] for a in answers]

    def received():
        found = {r[0]: r for r in control.records if r[0] in uuids}
        return len(found) == 3 and found

    records = control.wait_for(received, 5, "the three records")
    for x, prediction_uuid in zip((1, 2, 3), uuids, strict=True):
        _, start, end, metrics = records[prediction_uuid]
        assert before - 1 <= start <= end <= after + 1
        expected = {"input": x}
        if function == "scored":
            expected["detail"] = {"double": 2 * x, "tags": ["a", 1]}
        assert metrics == expected
    assert all(auth for _, path, auth in control.requests if "predictions" in path)


def test_records_are_kept_while_the_control_plane_fails(start_replica, control):
    replica = start_replica("scored")
    control.fail_next_predictions(3)
    uuids = {replica.call({"x": x}).json()["uuid"] for x in range(20)}
    control.wait_for(lambda: control.fail_predictions == 0, 10, "three failed posts")
    control.wait_for(lambda: uuids <= {r[0] for r in control.records}, 10, "the records")
    assert sum(r[0] in uuids for r in control.records) == 20  # each exactly once


def test_sigterm_under_load_sends_every_record_and_exits_0(start_replica, control):
    replica = start_replica("scored")
    control.fail_next_predictions(10**9)  # nothing gets through until the shutdown
    answered: list[str] = []
    stop = threading.Event()

    def load():
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                try:
                    answer = client.post(
                        replica.url("/model"), json={"accessKey": KEY, "request": {"x": 1}}
                    )
                except httpx.TransportError:
                    return  # the replica closed its socket
                if answer.status_code == 200:
                    answered.append(answer.json()["uuid"])

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    control.wait_for(lambda: len(answered) > 200, 20, "some answers")
    assert not set(answered) & {r[0] for r in control.records}
    replica.proc.send_signal(signal.SIGTERM)
    shutdown = "Waiting for application shutdown"
    control.wait_for(lambda: shutdown in replica.output(), 10, "the shutdown")
    time.sleep(0.3)  # its first posts fail too; the control plane recovers while it retries
    control.fail_next_predictions(0)
    status = replica.terminate()
    stop.set()
    for thread in threads:
        thread.join(10)
    assert status == 0, replica.output()
    received = {r[0] for r in control.records}
    assert set(answered) <= received, f"{len(set(answered) - received)} records lost"
    assert KEY not in replica.output() and TOKEN not in replica.output()


def test_async_functions_are_awaited_concurrently(start_replica):
    replica = start_replica("apredict")
    answers = {}

    def call(n):
        answers[n] = replica.call({"sleep": 0.6, "n": n})

    threads = [threading.Thread(target=call, args=(n,)) for n in range(3)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert time.monotonic() - started < 1.5  # 3 x 0.6 s one after another would be 1.8 s
    for n in range(3):
        assert answers[n].status_code == 200
        assert answers[n].json()["response"] == {"async": {"sleep": 0.6, "n": n}}


@pytest.mark.parametrize(
    ("file", "function", "message"),
    [
        ("model.py", "nope", "'model.py' has no function 'nope'"),
        ("model.py", "two_args", "function 'two_args' must take one argument"),
        ("missing.py", "predict", "file 'missing.py' does not exist in the build"),
    ],
)
def test_a_function_that_cannot_be_served_exits_2(control, model_dir, file, function, message):
    done = subprocess.run(
        command(control, function, file=file),
        cwd=model_dir,
        env=replica_env(free_port()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_the_module_runs_from_any_directory(control, tmp_path):
    """`python -m workbench_serving --help` outside the repository, as installed."""
    done = subprocess.run(
        [sys.executable, "-m", "workbench_serving", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    for option in ("--file", "--function", "--prefix", "--control-url", "--deployment-crn"):
        assert option in done.stdout
    for option in ("--replica", "--max-body-bytes", "--queue-limit", "--host"):
        assert option in done.stdout


def test_keys_and_token_never_appear_in_the_output(replica, control):
    assert replica.call(1, key=WRONG_KEY).status_code == 401
    assert replica.call({"raise": f"input {1}"}).status_code == 500
    output = replica.output()
    assert "ValueError: input 1" in output  # the log is the replica's
    for secret in (KEY, WRONG_KEY, TOKEN):
        assert secret not in output
