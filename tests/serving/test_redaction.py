"""Secrets out of log lines: `workbench_hub.redact` and the replica that installs it."""

import logging

import pytest

from workbench_hub import redact

TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
KEY = "wbk_Zq3-x_9Lm2PqRs7TuVw8XyZ0aBcD"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            f"404 GET /models/p/m/model?token={TOKEN}&x=1 (127.0.0.1) 1.2ms",
            "404 GET /models/p/m/model?token=[secret]&x=1 (127.0.0.1) 1.2ms",
        ),
        (f"GET /a?b=1&access_token={TOKEN}", "GET /a?b=1&access_token=[secret]"),
        (f"GET /a?accessKey={KEY}&_xsrf=2|ab", "GET /a?accessKey=[secret]&_xsrf=[secret]"),
        (f'{{"accessKey": "{KEY}", "request": 1}}', '{"accessKey": "[secret]", "request": 1}'),
        ("{'password': 'hunter2', 'x': 1}", "{'password': '[secret]', 'x': 1}"),
        (f"invalid access key {KEY}", "invalid access key wbk_[secret]"),
        (f"Authorization: token {TOKEN}", "Authorization: token [secret]"),
        (f"'authorization': 'Bearer {TOKEN}'", "'authorization': 'Bearer [secret]'"),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic [secret]"),
        (f"Rejected request from: token {TOKEN}", "Rejected request from: token [secret]"),
        (f"api_token={TOKEN} password=pw", "api_token=[secret] password=[secret]"),
        # already scrubbed (JupyterHub, jupyter-server) and ordinary words stay as they are
        ("GET /hub?token=[secret]", "GET /hub?token=[secret]"),
        ("Authorization: token [secret]", "Authorization: token [secret]"),
        ("the token expired: send a new token", "the token expired: send a new token"),
        ("auth_cache_seconds=5, 3 tokens: ok", "auth_cache_seconds=5, 3 tokens: ok"),
    ],
)
def test_redact(line, expected):
    assert redact.redact(line) == expected


@pytest.fixture
def installed():
    previous = logging.getLogRecordFactory()
    redact.install()
    factory = logging.getLogRecordFactory()
    redact.install()
    assert logging.getLogRecordFactory() is factory  # a second call does not wrap it again
    yield
    logging.setLogRecordFactory(previous)


def test_install_redacts_messages_arguments_and_tracebacks(installed, caplog):
    log = logging.getLogger("tests.redact")
    with caplog.at_level(logging.INFO, logger="tests.redact"):
        log.info("calling %s with %r", f"/x?token={TOKEN}", {"accessKey": KEY})
        try:
            raise ValueError(f"bad header Authorization: token {TOKEN}")
        except ValueError:
            log.exception("failed")
    assert TOKEN not in caplog.text and KEY not in caplog.text, caplog.text
    assert "/x?token=[secret] with {'accessKey': '[secret]'}" in caplog.text
    assert "ValueError: bad header Authorization: token [secret]" in caplog.text


def test_replica_logs_are_redacted(start_replica):
    """A model's exception quoting an access key: the replica logs it without the key."""
    replica = start_replica("predict")
    assert replica.call({"raise": f"no model for {KEY}"}).status_code == 500
    output = replica.output()
    assert "ValueError: no model for wbk_[secret]" in output, output
    assert KEY not in output
