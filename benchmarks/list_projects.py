"""Control plane list-projects throughput and latency at 50 concurrent clients.

Load comes from `wrk` (Debian package `wrk`: a C load generator, so the client is not the
bottleneck) with one user token. Measured: the workbench's
`GET /services/workbench/api/v1/projects` through the hub's proxy and directly on the control
plane's port, and, as the peer, JupyterHub's own `GET /hub/api/user` (the hub's cheapest
authenticated REST call) through the same proxy. Run from the repository root:

    apt-get install wrk
    python benchmarks/list_projects.py --clients 50 --seconds 15 --projects 20 [--db-url …]
"""

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import Workbench

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk(url: str, token: str, clients: int, seconds: int) -> dict:
    """Run wrk; return requests/s and the p50/p99 latency in milliseconds."""
    options = [f"-t{min(clients, 2)}", f"-c{clients}", f"-d{seconds}s", "--latency"]
    out = subprocess.run(
        ["wrk", *options, "-H", f"Authorization: token {token}", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Non-2xx" not in out, out

    def latency(pct: str) -> float:
        found = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        assert found, out
        value, unit = found.groups()
        return float(value) * UNITS[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"rps": rps, "p50": latency("50"), "p99": latency("99")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--projects", type=int, default=20)
    parser.add_argument("--db-url", help="control plane database (default SQLite)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("this benchmark needs wrk: apt-get install wrk")
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
        peer = "JupyterHub GET /hub/api/user (peer)"
        rows = {
            "workbench GET /api/v1/projects": f"{wb.api_url}/projects",
            "workbench, direct to the service": (
                f"http://127.0.0.1:{wb.service_port}/services/workbench/api/v1/projects"
            ),
            peer: f"{wb.url}/hub/api/user",
        }
        results = {name: wrk(url, token, args.clients, args.seconds) for name, url in rows.items()}
    finally:
        wb.stop()
    print(
        f"\n{args.clients} concurrent clients for {args.seconds} s each,"
        f" {args.projects} projects visible, database {'SQLite' if not args.db_url else 'given'}\n"
    )
    print(f"| {'endpoint':38} | req/s | p50 ms | p99 ms | req/s ratio vs peer |")
    print(f"|{'-' * 40}|-------|--------|--------|---------------------|")
    for name, r in results.items():
        print(
            f"| {name:38} | {r['rps']:5.0f} | {r['p50']:6.1f} | {r['p99']:6.1f} |"
            f" {r['rps'] / results[peer]['rps']:.2f}                |"
        )
    print("\ntarget: workbench p99 <= 50 ms")


if __name__ == "__main__":
    main()
