"""Control plane list-projects throughput and latency at 50 concurrent clients.

Both the workbench's `GET /services/workbench/api/v1/projects` and, as the peer, JupyterHub's own
`GET /hub/api/user` (the hub's cheapest authenticated REST call) are loaded through the same proxy,
with the same user token, the same number of concurrent clients and requests; the control plane
is also loaded directly on its own port, without the proxy. Run from the
repository root:

    python benchmarks/list_projects.py --clients 50 --requests 4000 --projects 20
"""

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.spawn import percentile
from tests.harness import Workbench


async def load(url: str, token: str, clients: int, requests: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    remaining = requests
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(client: httpx.AsyncClient):
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            r = await client.get(url)
            latencies.append(time.perf_counter() - start)
            assert r.status_code == 200, r.text

    async with httpx.AsyncClient(
        headers={"Authorization": f"token {token}"}, limits=limits, timeout=60
    ) as client:
        for _ in range(clients):  # warm up connections and caches
            await client.get(url)
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, latencies


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--projects", type=int, default=20)
    parser.add_argument("--db-url", help="control plane database (default SQLite)")
    args = parser.parse_args()
    wb = Workbench(db_url=args.db_url).start()
    try:
        token = wb.user_token("bench")
        for i in range(args.projects):
            r = httpx.post(
                f"{wb.api_url}/projects",
                json={"name": f"project-{i}", "description": "benchmark"},
                headers={"Authorization": f"token {token}"},
                timeout=60,
            )
            assert r.status_code == 201, r.text
        rows = {
            "workbench GET /api/v1/projects": f"{wb.api_url}/projects",
            "workbench, direct to the service": (
                f"http://127.0.0.1:{wb.service_port}/services/workbench/api/v1/projects"
            ),
            "JupyterHub GET /hub/api/user (peer)": f"{wb.url}/hub/api/user",
        }
        results = {
            name: asyncio.run(load(url, token, args.clients, args.requests))
            for name, url in rows.items()
        }
    finally:
        wb.stop()
    peer_rps = results["JupyterHub GET /hub/api/user (peer)"][0]
    print(
        f"\n{args.clients} concurrent clients, {args.requests} requests,"
        f" {args.projects} projects visible, through the proxy\n"
    )
    print(f"| {'endpoint':38} | req/s | p50 ms | p99 ms | req/s ratio vs peer |")
    print(f"|{'-' * 40}|-------|--------|--------|---------------------|")
    for name, (rps, lat) in results.items():
        print(
            f"| {name:38} | {rps:5.0f} | {statistics.median(lat) * 1000:6.1f} |"
            f" {percentile(lat, 99) * 1000:6.1f} | {rps / peer_rps:.2f}                |"
        )
    print("\ntarget: workbench p99 <= 50 ms")


if __name__ == "__main__":
    main()
