"""Scale run: N users each start a session through WorkbenchKubeSpawner, against the
Kubernetes API test double (tests/kubeapi) in a separate process.

Measured on the hub side (this process): Kubernetes API calls per spawn (counted by the
double, by verb and resource), hub CPU time per spawn, and spawn wall times with C spawns in
flight. Peer: plain KubeSpawner with `enable_user_namespaces` (Zero to JupyterHub's way: a
bare namespace and the pod), same double, same users. A second round stops and starts every
session again (the idempotent path). Run from the repository root:

    python benchmarks/k8s_spawn_scale.py --users 500 --concurrency 50
"""

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GiB = 2**30
TOKEN = "bench-service-token"  # noqa: S105 (the stand-in accepts any token)


# ---- the API server process: the double plus a stand-in for the control plane's spawn-options


async def serve() -> None:
    from aiohttp import web

    from tests.kubeapi import KubeAPIDouble

    double = KubeAPIDouble()
    url = await double.start()
    directory = tempfile.TemporaryDirectory()
    kubeconfig = double.write_kubeconfig(Path(directory.name) / "kubeconfig")

    async def spawn_options(request):
        user = request.match_info["user"]
        number = int(user.removeprefix("user"))
        projects = [f"own-{number}", f"team-{number // 10}"]
        return web.json_response(
            {
                "projects": [
                    {
                        "name": name,
                        "role": "owner",
                        "path": f"/srv/workbench/projects/{name}",
                        "read_only": False,
                    }
                    for name in projects
                ],
                "profiles": [
                    {"name": "small", "display_name": "Small", "cpu": 1, "memory": GiB, "gpu": 0}
                ],
            }
        )

    async def audit(request):
        return web.json_response({}, status=201)

    app = web.Application()
    prefix = "/services/workbench/api/v1"
    app.router.add_get(prefix + "/users/{user}/spawn-options", spawn_options)
    app.router.add_post(prefix + "/audit", audit)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    urls = {
        "api": url,
        "options": f"http://127.0.0.1:{port}{prefix}",
        "kubeconfig": str(kubeconfig),
    }
    print(json.dumps(urls), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"calls":
            calls = {f"{verb} {resource}": n for (verb, resource), n in double.calls.items()}
            print(json.dumps(calls), flush=True)
            double.reset_calls()
    await runner.cleanup()
    await double.stop()
    directory.cleanup()


# ---- the hub side


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Server:
    """The API server process, asked for its call counts over stdin."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.urls = json.loads(self.proc.stdout.readline())

    def calls(self) -> dict[str, int]:
        self.proc.stdin.write("calls\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


async def run_spawners(kind: str, users: int, concurrency: int, server: Server):
    from jupyterhub import orm
    from jupyterhub.objects import Hub
    from jupyterhub.user import User
    from kubernetes_asyncio.config import kube_config
    from kubespawner import KubeSpawner, clients
    from traitlets.config import Config

    from workbench_spawner.kubernetes import WorkbenchKubeSpawner

    # the double wrote it; kubernetes_asyncio read $KUBECONFIG at import
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = server.urls["kubeconfig"]
    db = orm.new_session_factory("sqlite:///:memory:")()
    db.add_all([orm.User(name=f"user{i}") for i in range(users)])
    db.commit()
    config = Config()
    config.UserNamespaces.hub_namespace = "workbench"
    config.UserNamespaces.nfs_server = "nfs.example.org"
    common = {
        "hub": Hub(base_url="/hub/"),
        "image": "jupyter-workbench/session:bench",
        "k8s_api_host": server.urls["api"],
        "start_timeout": 300,
    }
    spawners = []
    for row in db.query(orm.User).order_by(orm.User.id):
        server_name = f"own-{row.name.removeprefix('user')}"  # a session's name is its project's
        db.add(orm.Spawner(user=row, name=server_name))
        db.commit()
        if kind == "workbench":
            spawner = User(row, {"config": config})._new_spawner(
                server_name,
                spawner_class=WorkbenchKubeSpawner,
                workbench_api_url=server.urls["options"],
                workbench_api_token=TOKEN,
                **common,
            )
        else:
            spawner = User(row, {"config": Config()})._new_spawner(
                server_name,
                spawner_class=KubeSpawner,
                enable_user_namespaces=True,
                user_namespace_template="peer-{username}",
                **common,
            )
        spawner.api_token = "session-token"  # noqa: S105
        spawners.append(spawner)

    gate = asyncio.Semaphore(concurrency)

    async def one(spawner, times):
        async with gate:
            start = time.perf_counter()
            await spawner.start()
            times.append(time.perf_counter() - start)

    rounds = {}
    for name in ("first", "again"):
        server.calls()  # reset
        times: list[float] = []
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(s, times) for s in spawners))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        calls = server.calls()
        rounds[name] = {
            "calls_per_spawn": sum(calls.values()) / users,
            "calls": {k: v for k, v in sorted(calls.items(), key=lambda kv: -kv[1])},
            "hub_cpu_ms_per_spawn": 1000 * cpu / users,
            "wall_s": wall,
            "spawn_p50_ms": 1000 * statistics.median(times),
            "spawn_p95_ms": 1000 * percentile(times, 95),
        }
        await asyncio.gather(*(s.stop(now=True) for s in spawners))
        if kind == "workbench":
            for s in spawners:
                s.project = ""
    await KubeSpawner._stop_all_reflectors()
    clients._client_cache.clear()
    clients.load_config.cache_clear()
    return rounds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve())
        return
    results = {}
    for kind in ("kubespawner", "workbench"):
        server = Server()
        try:
            results[kind] = asyncio.run(run_spawners(kind, args.users, args.concurrency, server))
        finally:
            server.close()
    print(f"{args.users} users, {args.concurrency} spawns in flight")
    print(
        f"{'spawner':<12} {'round':<6} {'calls/spawn':>11} {'hub CPU ms/spawn':>17} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'total s':>8}"
    )
    for kind, rounds in results.items():
        for name, r in rounds.items():
            print(
                f"{kind:<12} {name:<6} {r['calls_per_spawn']:>11.1f} "
                f"{r['hub_cpu_ms_per_spawn']:>17.1f} {r['spawn_p50_ms']:>8.0f} "
                f"{r['spawn_p95_ms']:>8.0f} {r['wall_s']:>8.1f}"
            )
    for kind, rounds in results.items():
        for name, r in rounds.items():
            top = ", ".join(f"{k}: {v / args.users:.2f}" for k, v in r["calls"].items())
            print(f"{kind} {name} calls per spawn: {top}")
    w, k = results["workbench"]["first"], results["kubespawner"]["first"]
    calls = w["calls_per_spawn"] / k["calls_per_spawn"]
    cpu = w["hub_cpu_ms_per_spawn"] / k["hub_cpu_ms_per_spawn"]
    print(f"workbench/kubespawner, first spawn: calls x{calls:.2f}, hub CPU x{cpu:.2f}")


if __name__ == "__main__":
    main()
