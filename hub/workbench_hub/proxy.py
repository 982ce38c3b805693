"""The workbench's proxy: the Python configurable-http-proxy, streaming and balancing.

The PyPI port of configurable-http-proxy reads a whole upstream response before answering, so a
followed log (`…/logs?follow=true`) or a large download reaches the client only at its end. This
entry point runs the same proxy (same command line, same REST API for JupyterHub) with a handler
that forwards the status, headers and each body chunk as they arrive.

It also balances: a route whose data holds ``"workbench_targets": [url, …]`` (model replicas,
docs/models.md) sends each request to the next of those targets in turn, and on to the next one
when a target cannot be reached before it answered (a replica that was just stopped or died).

Request bodies are collected as they arrive (a balanced request may have to be sent again, to
the next target) and forwarded whole with a Content-Length, also when the client sent them
chunked. A chunked body to a balanced route larger than ``--model-max-body-bytes``
(default: the replicas' own limit, ``ModelSupervisor.max_body_bytes``) gets a 413 JSON answer as
soon as it passes the limit; the rest is read and dropped, never kept, so the client can read
that answer. Bodies with a Content-Length are left to the replica, which refuses them from the
header. Every log line of the process goes through `workbench_hub.redact`.
"""

import itertools
import json
import urllib.parse

import click
from configurable_http_proxy import cli, configproxy
from configurable_http_proxy.handlers import ProxyHandler
from tornado import httputil, web
from tornado.httpclient import AsyncHTTPClient

from workbench_hub import redact

#: Headers of one hop that the proxy must not forward (tornado frames the response itself).
HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "content-encoding", "connection"})
#: default of --model-max-body-bytes: the replicas' default limit (1 MiB)
MODEL_MAX_BODY_BYTES = 1024**2


#: per balanced route prefix, the counter that picks the next target
_TURNS: dict[str, itertools.count] = {}


class _NotReached(Exception):
    """A balanced target failed before answering: try the next one."""


@web.stream_request_body
class StreamingProxyHandler(ProxyHandler):
    """Proxies HTTP requests chunk by chunk; websockets and routing are the library's."""

    #: largest chunked request body to a balanced route (set from the command line)
    model_max_body_bytes = MODEL_MAX_BODY_BYTES

    def prepare(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._refused = False
        self._limit = None
        if "Content-Length" not in self.request.headers and self.path_args:
            target = self.proxy.target_for_req(None, self.path_args[0])
            route = self.proxy.get_route(target["prefix"]) if target else None
            if route and route.get("workbench_targets"):
                self._limit = self.model_max_body_bytes

    def data_received(self, chunk: bytes) -> None:
        if self._refused:
            return
        self._size += len(chunk)
        if self._limit is not None and self._size > self._limit:
            self._refuse()
            return
        self._chunks.append(chunk)

    def _refuse(self) -> None:
        """Answer 413 now; the body's remaining chunks are dropped as they arrive."""
        self._refused, self._chunks = True, []
        message = f"the body is larger than {self._limit} bytes"
        body = json.dumps({"success": False, "error": message}).encode()
        self.set_status(413)
        self.set_header("Content-Type", "application/json")
        self.set_header("Content-Length", len(body))
        self.write(body)
        self.flush()

    async def call_proxy(self, path=None):
        if self._refused:
            self.finish()
            return
        self.request.body = b"".join(self._chunks)
        self._chunks = []
        url = await self.get_target_url(path)
        if url is None:
            return
        urls = self._balanced_urls(url)
        for attempt, target_url in enumerate(urls):
            try:
                await self._forward(target_url, last=attempt == len(urls) - 1)
                return
            except _NotReached:
                continue

    def _balanced_urls(self, url: str) -> list[str]:
        """``url`` for a plain route; for a balanced route, every target in round-robin order."""
        route = self.proxy.get_route(self.target["prefix"]) or {}
        targets = route.get("workbench_targets")
        if not targets:
            return [url]
        turn = next(_TURNS.setdefault(self.target["prefix"], itertools.count()))
        parsed = urllib.parse.urlsplit(url)
        ordered = targets[turn % len(targets) :] + targets[: turn % len(targets)]
        return [
            parsed._replace(netloc=urllib.parse.urlsplit(target).netloc).geturl()
            for target in ordered
        ]

    async def _forward(self, url: str, last: bool) -> None:
        request = self._get_proxy_request(url)
        # the body goes on whole, with a Content-Length: never also as chunked
        for name in [name for name in request.headers if name.lower() == "transfer-encoding"]:
            del request.headers[name]
        # the library decompresses and drops content-encoding: keep that behaviour
        request.decompress_response = True
        upstream_headers = httputil.HTTPHeaders()
        started = False

        def on_header(line: str) -> None:
            nonlocal started
            if line.startswith("HTTP/"):
                start = httputil.parse_response_start_line(line.strip())
                self.set_status(start.code, start.reason)
                upstream_headers.clear()
            elif line.strip():
                upstream_headers.parse_line(line)
            else:
                self._copy_headers(upstream_headers)
                started = True

        def on_chunk(chunk: bytes) -> None:
            self.write(chunk)
            self.flush()

        request.header_callback = on_header
        request.streaming_callback = on_chunk
        try:
            await AsyncHTTPClient().fetch(request, raise_error=False)
        except Exception as err:
            if not started:
                if not last:
                    raise _NotReached from err
                await self.handle_proxy_error(503, err)
                return
            raise
        self.finish()

    def write_error(self, status_code: int, **kwargs) -> None:
        """The library's error page; a 405 (a method the proxy does not forward, like TRACE)
        says which methods it does."""
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.SUPPORTED_METHODS))
        super().write_error(status_code, **kwargs)

    def _copy_headers(self, headers: httputil.HTTPHeaders) -> None:
        own = {name.lower() for name, _ in self._headers.get_all()}
        for name, value in headers.get_all():
            if name.lower() in HOP_HEADERS:
                continue
            if name.lower() in own:
                self.set_header(name, value)
            else:
                self.add_header(name, value)


def _run(model_max_body_bytes: int, **options) -> None:
    StreamingProxyHandler.model_max_body_bytes = model_max_body_bytes
    cli.main.callback(**options)


#: configurable-http-proxy's command line plus the workbench's own option
command = click.Command(
    "workbench-proxy",
    callback=_run,
    params=[
        *cli.main.params,
        click.Option(
            ["--model-max-body-bytes"],
            type=click.IntRange(min=1),
            default=MODEL_MAX_BODY_BYTES,
            show_default=True,
            help="Largest chunked request body a model route (a route with workbench_targets) "
            "takes; a larger one gets 413. Keep it equal to ModelSupervisor.max_body_bytes.",
        ),
    ],
    help=cli.main.help,
)


def main() -> None:
    """Run configurable-http-proxy with the streaming handler and redacted logs."""
    redact.install()
    configproxy.ProxyHandler = StreamingProxyHandler
    command()


if __name__ == "__main__":
    main()
