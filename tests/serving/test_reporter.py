"""The replica's metrics buffer when the control plane fails, in-process (httpx MockTransport)."""

import json
import logging

import httpx

from workbench_serving import reporter as reporter_module
from workbench_serving.reporter import Reporter
from workbench_serving.stats import Stats

URL = "http://control.test/api/deployments/crn:d"


class FlakyControlPlane:
    """Answers prediction posts with 503 while `failing`, else records them (204)."""

    def __init__(self) -> None:
        self.failing = True
        self.posts: list[list] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/deployments/crn:d/predictions"
        if self.failing:
            return httpx.Response(503, json={"message": "database is locked"})
        self.posts.append(json.loads(request.content)["records"])
        return httpx.Response(204)


async def test_failed_posts_keep_the_newest_records_up_to_the_bound(caplog, monkeypatch):
    control = FlakyControlPlane()
    async with httpx.AsyncClient(transport=httpx.MockTransport(control)) as http:
        reporter = Reporter(http, URL, "mdl-0", Stats(), max_buffered=5)
        reporter.records.extend([f"u{i}", i, i + 1, {"n": i}] for i in range(8))
        with caplog.at_level(logging.WARNING, logger="workbench_serving.reporter"):
            assert await reporter.flush() is False
        assert [r[0] for r in reporter.records] == ["u3", "u4", "u5", "u6", "u7"]
        assert reporter.dropped == 3
        assert "dropped the 3 oldest records" in caplog.text
        assert "HTTP 503" in caplog.text

        control.failing = False
        monkeypatch.setattr(reporter_module, "MAX_PER_POST", 2)
        assert await reporter.flush() is True
    assert [[r[0] for r in post] for post in control.posts] == [["u3", "u4"], ["u5", "u6"], ["u7"]]
    assert control.posts[0][0] == ["u3", 3, 4, {"n": 3}]
    assert not reporter.records and reporter.sent == 5


async def test_a_record_that_is_not_json_is_dropped_alone(caplog):
    control = FlakyControlPlane()
    control.failing = False
    async with httpx.AsyncClient(transport=httpx.MockTransport(control)) as http:
        reporter = Reporter(http, URL, "mdl-0", Stats())
        metrics = {"ok": 1}
        reporter.records.extend([["u1", 1, 2, metrics], ["u2", 1, 2, {"bad": object()}]])
        with caplog.at_level(logging.WARNING, logger="workbench_serving.reporter"):
            assert await reporter.flush() is True
    assert control.posts == [[["u1", 1, 2, {"ok": 1}]]]
    assert "dropped the metrics of prediction u2" in caplog.text


async def test_records_added_during_a_post_wait_for_the_next_one():
    posts = []

    async def handler(request: httpx.Request) -> httpx.Response:
        posts.append([r[0] for r in json.loads(request.content)["records"]])
        if len(posts) < 3:
            reporter.records.append([f"late{len(posts)}", 1, 2, {}])  # a call ends meanwhile
        return httpx.Response(204)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        reporter = Reporter(http, URL, "mdl-0", Stats())
        reporter.records.extend([f"u{i}", 1, 2, {}] for i in range(3))
        assert await reporter.flush() is True
        assert posts == [["u0", "u1", "u2"]]  # one post, not one per record that came later
        assert [r[0] for r in reporter.records] == ["late1"]


async def test_a_record_the_control_plane_refuses_is_dropped_alone(caplog):
    posts = []

    def handler(request: httpx.Request) -> httpx.Response:
        records = json.loads(request.content)["records"]
        if any(r[0] == "u5" for r in records):
            return httpx.Response(400, json={"message": "records[5]: endTimeStampMs is before"})
        posts.append([r[0] for r in records])
        return httpx.Response(204)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        reporter = Reporter(http, URL, "mdl-0", Stats())
        reporter.records.extend([f"u{i}", 1, 2, {}] for i in range(12))
        with caplog.at_level(logging.WARNING, logger="workbench_serving.reporter"):
            assert await reporter.flush() is True
    sent = [u for post in posts for u in post]
    assert sorted(sent) == sorted(f"u{i}" for i in range(12) if i != 5)
    assert not reporter.records and (reporter.sent, reporter.dropped) == (11, 1)
    assert "refused the metrics of prediction u5: records[5]" in caplog.text
