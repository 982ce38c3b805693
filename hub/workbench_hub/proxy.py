"""The workbench's proxy: the Python configurable-http-proxy, streaming and balancing.

The PyPI port of configurable-http-proxy reads a whole upstream response before answering, so a
followed log (`…/logs?follow=true`) or a large download reaches the client only at its end. This
entry point runs the same proxy (same command line, same REST API for JupyterHub) with a handler
that forwards the status, headers and each body chunk as they arrive.

It also balances: a route whose data holds ``"workbench_targets": [url, …]`` (model replicas,
docs/models.md) sends each request to the next of those targets in turn, and on to the next one
when a target cannot be reached before it answered (a replica that was just stopped or died).
"""

import itertools
import urllib.parse

from configurable_http_proxy import cli, configproxy
from configurable_http_proxy.handlers import ProxyHandler
from tornado import httputil
from tornado.httpclient import AsyncHTTPClient

#: Headers of one hop that the proxy must not forward (tornado frames the response itself).
HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "content-encoding", "connection"})


#: per balanced route prefix, the counter that picks the next target
_TURNS: dict[str, itertools.count] = {}


class _NotReached(Exception):
    """A balanced target failed before answering: try the next one."""


class StreamingProxyHandler(ProxyHandler):
    """Proxies HTTP requests chunk by chunk; websockets and routing are the library's."""

    async def call_proxy(self, path=None):
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

    def _copy_headers(self, headers: httputil.HTTPHeaders) -> None:
        own = {name.lower() for name, _ in self._headers.get_all()}
        for name, value in headers.get_all():
            if name.lower() in HOP_HEADERS:
                continue
            if name.lower() in own:
                self.set_header(name, value)
            else:
                self.add_header(name, value)


def main() -> None:
    """Run configurable-http-proxy with the streaming handler."""
    configproxy.ProxyHandler = StreamingProxyHandler
    cli.main()


if __name__ == "__main__":
    main()
