"""`python -m workbench_serving`: one replica of a model deployment (docs/models.md).

Run in the build's source directory. Listens on 127.0.0.1 (a pod's IP in a pod) at
`WORKBENCH_PORT_HTTP`; talks to the control plane with the secret in
`WORKBENCH_DEPLOYMENT_TOKEN`. A synchronous function runs
in `--threads` worker threads (default 1); with one thread, once it has proved fast it is
called on the event loop's thread when that is cheaper (runner.SyncRunner), unless
`--no-inline` (always the worker thread). Exit status: 0 after a graceful stop
(SIGTERM: in-flight requests finish, buffered metrics are sent), 2 when the function cannot be
loaded or the command line or environment is wrong, 3 when the server could not start.
"""

import argparse
import gc
import logging
import os
import signal
import socket
import sys

from workbench_hub import redact

from .loader import ModelLoadError, load_function

EXIT_BAD_MODEL = 2
EXIT_STARTUP = 3
GRACEFUL_SHUTDOWN_SECONDS = 25


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m workbench_serving",
        description="Serve one function of a model build over HTTP (one replica).",
    )
    parser.add_argument("--file", required=True, help="the model's file, relative to the cwd")
    parser.add_argument("--function", required=True, help="the function of that file to serve")
    parser.add_argument("--prefix", default="", help="URL prefix, e.g. /models/<project>/<model>")
    parser.add_argument("--control-url", required=True, help="the control plane's API base URL")
    parser.add_argument("--deployment-crn", required=True, help="the deployment's CRN")
    parser.add_argument(
        "--replica",
        default=socket.gethostname(),
        help="this replica's workload name (default: the host name, a pod's name)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=_positive,
        default=1 << 20,
        help="larger request bodies are refused with 413 (default 1 MiB)",
    )
    parser.add_argument(
        "--queue-limit",
        type=_positive,
        default=64,
        help="requests waiting or running beyond this number are refused with 429 (default 64)",
    )
    parser.add_argument(
        "--threads",
        type=_positive,
        default=1,
        help="worker threads running a synchronous function (default 1)",
    )
    parser.add_argument(
        "--no-inline",
        dest="inline",
        action="store_false",
        help="never call a fast synchronous function on the event loop's thread",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("WORKBENCH_POD_IP") or "127.0.0.1",
        help="address to listen on (default: the pod's IP in a pod, else 127.0.0.1)",
    )
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        print(f"workbench_serving: {name} is not set", file=sys.stderr)
        sys.exit(EXIT_BAD_MODEL)
    return value


def main(argv=None) -> int:
    args = parse_args(argv)
    port_text = _env("WORKBENCH_PORT_HTTP")
    if not port_text.isdigit():
        print(f"workbench_serving: WORKBENCH_PORT_HTTP is not a port: {port_text}", file=sys.stderr)
        return EXIT_BAD_MODEL
    token = _env("WORKBENCH_DEPLOYMENT_TOKEN")
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore"):  # one line per control-plane call otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    redact.install()  # no access key or token in any line, even one a library writes

    try:
        func = load_function(os.getcwd(), args.file, args.function)
    except ModelLoadError as exc:
        print(f"workbench_serving: {exc}", file=sys.stderr)
        return EXIT_BAD_MODEL

    import uvicorn

    from .app import ModelApp

    app = ModelApp(
        func,
        function_name=args.function,
        prefix=args.prefix,
        control_url=args.control_url,
        deployment_crn=args.deployment_crn,
        replica=args.replica,
        token=token,
        max_body_bytes=args.max_body_bytes,
        queue_limit=args.queue_limit,
        threads=args.threads,
        inline=args.inline,
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=int(port_text),
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    server = uvicorn.Server(config)
    # The model, its libraries and the server stay for the life of the process: keep them out
    # of the collector's full passes, which would walk them all and show in the latency tail.
    gc.collect()
    gc.freeze()

    # uvicorn handles SIGTERM/SIGINT while it serves (graceful shutdown), then restores the
    # handlers it found and raises the signal again: this one makes that a normal exit (0), and
    # a signal that comes before uvicorn's handlers are in place a graceful stop too.
    signals = []

    def on_signal(signum, frame) -> None:
        signals.append(signum)
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    server.run()
    if not server.started and not signals:
        return EXIT_STARTUP
    return 0


if __name__ == "__main__":
    sys.exit(main())
