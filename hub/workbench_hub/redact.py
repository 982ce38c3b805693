"""Secrets out of log lines: tokens, access keys, passwords and Authorization headers.

`redact` rewrites a text; `install` makes every log record of the process pass through it
(the hub, the proxy, the control plane and model replicas call it at start). Only the
standard library is used, so any process of the workbench can import this module cheaply.
"""

import logging
import re
import traceback

#: what a redacted value becomes
REDACTED = "[secret]"

# query parameters whose name contains one of these (as JupyterHub's and jupyter_server's
# access logs scrub them), e.g. ?token=…, ?access_key=…, &state=…
_QUERY = r"(?P<query>[?&;][^=&\s#]*(?:token|key|auth|password|secret|code|state|xsrf)[^=&\s#]*=)"
# name = value and JSON / repr fields: token=…, "accessKey": "…", 'password': '…'
_FIELD = (
    r"(?P<field>[\"']?\b[\w-]*(?:token|password|secret|access_?key)[\"']?\s*[:=]\s*[\"']?"
    r"(?!\[secret\]))"
)
# an Authorization header in any rendering: Authorization: token …, 'authorization': 'Bearer …'
_HEADER = (
    r"(?P<header>\bauthorization[\"']?\s*[:=]\s*[\"']?(?:(?:token|bearer|basic)\s+)?+"
    r"(?!\[secret\]))"
)
# a credential after its scheme in prose: "from: token 1f0c…", "Bearer eyJ…" (16+ characters
# with a digit, so that words after "token" stay)
_SCHEME = r"(?P<scheme>\b(?:token|bearer)\s+)(?=[^\s\"']*\d)(?=[\w.~+/=-]{16})"
# model access keys have a fixed prefix wherever they appear
_ACCESS_KEY = r"(?P<prefix>\bwbk_)(?!\[secret\])"

_PATTERN = re.compile(
    rf"(?i:{_QUERY}|{_HEADER}|{_FIELD}|{_SCHEME})[^\s\"'&,;}}#)]+|{_ACCESS_KEY}[\w-]+"
)


def _keep_name(match: re.Match) -> str:
    return next(group for group in match.groups() if group is not None) + REDACTED


def redact(text: str) -> str:
    """`text` with every credential value replaced by ``[secret]``."""
    return _PATTERN.sub(_keep_name, text)


def _redacting_factory(make_record):
    def factory(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it when emitting
            return record
        record.msg, record.args = redact(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)))
            record.exc_text = record.exc_text.rstrip("\n")
        return record

    factory.redacts = True
    return factory


def install() -> None:
    """Redact the message and traceback of every log record this process makes from now on.

    Works at record creation (`logging.setLogRecordFactory`), so it covers every logger and
    handler, including those of libraries configured later. Calling it again does nothing.
    """
    current = logging.getLogRecordFactory()
    if not getattr(current, "redacts", False):
        logging.setLogRecordFactory(_redacting_factory(current))
