"""The workbench's proxy: the Python configurable-http-proxy, streaming responses.

The PyPI port of configurable-http-proxy reads a whole upstream response before answering, so a
followed log (`…/logs?follow=true`) or a large download reaches the client only at its end. This
entry point runs the same proxy (same command line, same REST API for JupyterHub) with a handler
that forwards the status, headers and each body chunk as they arrive.
"""

from configurable_http_proxy import cli, configproxy
from configurable_http_proxy.handlers import ProxyHandler
from tornado import httputil
from tornado.httpclient import AsyncHTTPClient

#: Headers of one hop that the proxy must not forward (tornado frames the response itself).
HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "content-encoding", "connection"})


class StreamingProxyHandler(ProxyHandler):
    """Proxies HTTP requests chunk by chunk; websockets and routing are the library's."""

    async def call_proxy(self, path=None):
        url = await self.get_target_url(path)
        if url is None:
            return
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
