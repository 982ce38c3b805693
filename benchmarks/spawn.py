"""Session spawn-to-ready time: the workbench's project sessions vs plain JupyterHub.

Peer: JupyterHub with its SimpleLocalProcessSpawner starting the same `jupyterhub-singleuser`
(JupyterLab) through the same Python proxy, with no workbench parts. Each spawn is timed from
the REST request that starts the named server until the server answers `/api/status` through the
proxy; the server is then stopped. Run from the repository root:

    python benchmarks/spawn.py --spawns 12
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import Workbench
from tests.postgres import free_port

PLAIN_HUB_CONFIG = """
import sys
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [
    sys.executable, "-c", "from configurable_http_proxy.cli import main; main()"]
c.JupyterHub.allow_named_servers = True
c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{data}/homes/{{username}}"
c.Spawner.default_url = "/lab"
c.Spawner.args = {args!r}
c.JupyterHub.db_url = "sqlite:///{data}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{data}/cookie_secret"
c.JupyterHub.services = [{{"name": "bench", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"],
    "scopes": ["admin:users", "admin:servers", "tokens", "access:servers"]}}]
"""


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def time_spawns(url, hub_token, user_token, user, server, count, body=None) -> list[float]:
    hub = httpx.Client(
        base_url=f"{url}/hub/api", headers={"Authorization": f"token {hub_token}"}, timeout=120
    )
    times = []
    for _ in range(count):
        start = time.perf_counter()
        r = hub.post(f"/users/{user}/servers/{server}", json=body or {})
        assert r.status_code in (201, 202), r.text
        while True:
            status = httpx.get(
                f"{url}/user/{user}/{server}/api/status",
                headers={"Authorization": f"token {user_token}"},
                timeout=60,
            )
            if status.status_code == 200:
                break
            time.sleep(0.02)
        times.append(time.perf_counter() - start)
        r = hub.delete(f"/users/{user}/servers/{server}")
        assert r.status_code in (202, 204), r.text
        while hub.get(f"/users/{user}").json()["servers"].get(server, {}).get("pending"):
            time.sleep(0.05)
    return times


def bench_workbench(count):
    wb = Workbench().start()
    isolated = "own unix account" in wb.log_path.read_text()
    print(f"workbench sessions: {'isolated' if isolated else 'NOT isolated'} (docs/isolation.md)")
    try:
        token = wb.user_token("bench")
        r = httpx.post(
            f"{wb.api_url}/projects",
            json={"name": "bench"},
            headers={"Authorization": f"token {token}"},
            timeout=60,
        )
        assert r.status_code == 201, r.text
        return time_spawns(wb.url, wb.admin_token, token, "bench", "bench", count)
    finally:
        wb.stop()


def bench_plain_hub(count):
    data = Path(tempfile.mkdtemp(prefix="bench-plain-hub-"))
    port, token = free_port(), "b" * 32
    (data / "config.py").write_text(
        PLAIN_HUB_CONFIG.format(
            port=port,
            hub_port=free_port(),
            proxy_api_port=free_port(),
            data=data,
            token=token,
            # as the workbench spawner does when the hub runs as root
            args=["--ServerApp.allow_root=True"] if os.geteuid() == 0 else [],
        )
    )
    log = open(data / "hub.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "-f", str(data / "config.py")],
        cwd=data,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/hub/api/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        hub = httpx.Client(headers={"Authorization": f"token {token}"}, timeout=60)
        hub.post(f"{url}/hub/api/users/bench")
        user_token = hub.post(f"{url}/hub/api/users/bench/tokens", json={}).json()["token"]
        return time_spawns(url, token, user_token, "bench", "bench", count)
    finally:
        proc.terminate()
        proc.wait(60)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spawns", type=int, default=12)
    args = parser.parse_args()
    results = {
        "workbench (WorkbenchLocalSpawner)": bench_workbench(args.spawns),
        "plain JupyterHub (SimpleLocalProcessSpawner)": bench_plain_hub(args.spawns),
    }
    peer = results["plain JupyterHub (SimpleLocalProcessSpawner)"]
    print(f"\nspawn-to-ready over {args.spawns} spawns (seconds)\n")
    print(f"| {'system':45} | p50   | p95   | mean  | p50 ratio vs peer |")
    print(f"|{'-' * 47}|-------|-------|-------|-------------------|")
    for name, times in results.items():
        ratio = statistics.median(times) / statistics.median(peer)
        print(
            f"| {name:45} | {statistics.median(times):.2f}  | {percentile(times, 95):.2f}  |"
            f" {statistics.mean(times):.2f}  | {ratio:.2f}              |"
        )
    print("\ntarget: workbench p50 <= 2.00 s")


if __name__ == "__main__":
    main()
