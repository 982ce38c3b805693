"""Model metrics ingest: per-prediction records written per second, against 100,000/s.

Measured on PostgreSQL (a server started here from Debian's `postgresql`, with fsync on
unless `--no-fsync`; or `--db-url`) and, for comparison, on SQLite:

* store: `MetricsStore.add_predictions` with batches of `--batch` records (COPY on
  PostgreSQL, one executemany on SQLite), one transaction per batch, from 1 and from
  `--workers` concurrent callers (replicas post at the same time);
* HTTP: a real `workbench up` on a fresh database, `--senders` threads each posting
  `{"records": [...]}` batches to `POST /deployments/{crn}/predictions` as replicas do,
  through the hub's proxy and directly to the control plane's port;
* read: `MetricsStore.read` of a window of `--read` records.

Besides records/s (which depends on what else loads the machine) it prints the CPU time each
record cost the server side (PostgreSQL backends; for HTTP also the hub, proxy and control
plane processes) and the calling process, read from /proc. Each record is a typical tracked
prediction (a uuid, start/end times, four metrics, about 170 bytes of JSON). Run from the
repository root:

    python benchmarks/metrics_ingest.py --records 300000 --batch 5000 [--db-url …] [--no-http]
"""

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import orjson
import psycopg
from sqlalchemy import create_engine
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "hub"))

from tests.harness import Workbench
from tests.models.rows import build_row, deployment_row, model_row
from tests.postgres import PostgresServer
from workbench_hub.db import Database, sync_url, upgrade_db
from workbench_hub.models import new_secret
from workbench_hub.models.metrics_store import MetricsStore
from workbench_hub.orm import Project

TARGET = 100_000
TOKEN = new_secret()


class FsyncPostgres(PostgresServer):
    """The test suite's PostgreSQL server, but durable (fsync on) like a real one."""

    def __init__(self, fsync: bool) -> None:
        super().__init__()
        self.fsync = fsync

    def _as_owner(self, argv):
        if self.fsync:
            argv = ["fsync=on" if a == "fsync=off" else a for a in argv]
        return super()._as_owner(argv)


def make_records(count: int, start_ms: int) -> list[list]:
    return [
        [
            str(uuid.uuid4()),
            start_ms + i,
            start_ms + i + 12,
            {
                "probability": (i % 997) / 997,
                "label": ("setosa", "versicolor", "virginica")[i % 3],
                "input": {"petal_length": 1.4 + (i % 50) / 10, "petal_width": 0.2},
                "latency_ms": 3 + i % 7,
            },
        ]
        for i in range(count)
    ]


def seed(url: str) -> tuple[int, str]:
    """A project, model, build and deployment (token TOKEN); the deployment's id and CRN."""
    engine = create_engine(sync_url(url))
    try:
        with Session(engine) as session:
            name = f"bench-{uuid.uuid4().hex[:8]}"
            owner = Project(name=name, owner_kind="user", owner_name="bench")
            session.add(owner)
            session.flush()
            model = model_row(owner.id, user="bench")
            session.add(model)
            session.flush()
            build = build_row(model, user="bench")
            session.add(build)
            session.flush()
            deployment = deployment_row(model.id, build.id, token=TOKEN, user="bench")
            session.add(deployment)
            session.commit()
            return deployment.id, deployment.crn
    finally:
        engine.dispose()


def backend_cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) of these local processes, in seconds."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def store_rates(url: str, total: int, batch: int, read_count: int, workers: int) -> dict:
    """Records/s of add_predictions from `workers` concurrent callers (as replicas post at
    once), the CPU each record costs the server (PostgreSQL on this machine) and this
    process, and seconds to read `read_count` records."""
    deployment_id, _ = seed(url)
    db = Database(url)
    store = MetricsStore(db=db)
    start_ms = int(time.time() * 1000) - 3_600_000
    batches = [make_records(batch, start_ms + n * batch) for n in range(total // batch)]

    async def worker(mine: list) -> None:
        for records in mine:
            await store.add_predictions(deployment_id, records)

    # one connection per worker, opened before the clock starts
    await asyncio.gather(*(worker([make_records(10, 0)]) for _ in range(workers)))
    pids = []
    if db.engine.dialect.name == "postgresql":
        async with db.engine.connect() as conn:
            pids = list(
                await conn.scalars(
                    sql_text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
                )
            )
    server_cpu, client_cpu = backend_cpu_seconds(pids), time.process_time()
    began = time.perf_counter()
    await asyncio.gather(*(worker(batches[w::workers]) for w in range(workers)))
    elapsed = time.perf_counter() - began
    server_cpu = backend_cpu_seconds(pids) - server_cpu
    client_cpu = time.process_time() - client_cpu
    read_began = time.perf_counter()
    got = await store.read([deployment_id], start_ms, start_ms + read_count - 1)
    read_seconds = time.perf_counter() - read_began
    assert len(got) == min(read_count, total), len(got)
    await db.dispose()
    written = len(batches) * batch
    return {
        "rate": written / elapsed,
        "server_us": server_cpu / written * 1e6 if pids else None,
        "client_us": client_cpu / written * 1e6,
        "read": read_seconds,
    }


def http_rate(url: str, crn: str, total: int, batch: int, senders: int) -> tuple[int, float]:
    """Records posted by `senders` threads, each its share of `total` in `batch`es, and
    the seconds it took."""
    start_ms = int(time.time() * 1000) - 3_600_000
    per_sender = total // batch // senders
    bodies = [
        [
            orjson.dumps({"records": make_records(batch, start_ms + (s * per_sender + n) * batch)})
            for n in range(per_sender)
        ]
        for s in range(senders)
    ]
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    errors = []

    def send(mine: list[bytes]) -> None:
        with httpx.Client(timeout=120) as client:
            for body in mine:
                r = client.post(
                    f"{url}/deployments/{crn}/predictions", content=body, headers=headers
                )
                if r.status_code != 204:
                    errors.append(r.text)
                    return

    threads = [threading.Thread(target=send, args=(mine,)) for mine in bodies]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(errors[0])
    return per_sender * senders * batch, elapsed


def http_rates(url: str, total: int, batch: int, senders: int) -> dict:
    """Rates through the proxy and direct, with the CPU the workbench (hub, proxy, control
    plane) and PostgreSQL spent per record."""
    _, crn = seed(url)
    wb = Workbench(db_url=url).start()
    try:
        direct = f"http://127.0.0.1:{wb.service_port}/services/workbench/api/v1"
        http_rate(wb.api_url, crn, batch, batch, senders)  # warm up: connections, imports
        results = {}
        for name, base in (("proxy", wb.api_url), ("direct", direct)):
            processes = wb.descendants()
            pids = pg_backends(url)
            before = sum(p.cpu_times().user + p.cpu_times().system for p in processes)
            before += backend_cpu_seconds(pids)
            written, elapsed = http_rate(base, crn, total, batch, senders)
            after = sum(p.cpu_times().user + p.cpu_times().system for p in processes)
            after += backend_cpu_seconds(pids)
            results[name] = {
                "rate": written / elapsed,
                "server_us": (after - before) / written * 1e6,
            }
        return results
    finally:
        wb.stop()


def pg_backends(url: str) -> list[int]:
    if not url.startswith("postgresql"):
        return []
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql", 1)) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return [pid for (pid,) in rows]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2, help="concurrent store callers")
    parser.add_argument("--senders", type=int, default=2, help="concurrent HTTP posters")
    parser.add_argument("--read", type=int, default=10_000, help="records in the read window")
    parser.add_argument("--db-url", help="a PostgreSQL URL (default: start a server here)")
    parser.add_argument("--no-fsync", action="store_true", help="start PostgreSQL fsync=off")
    parser.add_argument("--no-http", action="store_true", help="only the store")
    args = parser.parse_args()

    server = None
    if not args.db_url:
        server = FsyncPostgres(fsync=not args.no_fsync).start()
    tmp = Path(tempfile.mkdtemp(prefix="metrics-bench-"))
    rows, reads = [], []
    try:
        for name in ("PostgreSQL", "SQLite"):
            for use in ("store-1", "store-n", "http"):
                if use == "http" and args.no_http:
                    continue
                if name == "SQLite":
                    url = f"sqlite:///{tmp / f'{use}.sqlite'}"
                else:
                    url = args.db_url or server.new_database()
                upgrade_db(url)
                if use.startswith("store"):
                    workers = 1 if use == "store-1" else args.workers
                    result = asyncio.run(
                        store_rates(url, args.records, args.batch, args.read, workers)
                    )
                    rows.append((f"{name}: store, {workers} caller(s)", result))
                    reads.append((name, result["read"]))
                else:
                    rates = http_rates(url, args.records, args.batch, args.senders)
                    rows.append(
                        (f"{name}: HTTP via the proxy, {args.senders} senders", rates["proxy"])
                    )
                    rows.append((f"{name}: HTTP direct, {args.senders} senders", rates["direct"]))
    finally:
        if server:
            server.stop()

    fsync = "given server" if args.db_url else ("fsync off" if args.no_fsync else "fsync on")
    print(
        f"\n{args.records:,} records in batches of {args.batch:,}; PostgreSQL {fsync};"
        f" target {TARGET:,} records/s on PostgreSQL; machine load average"
        f" {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n"
    )
    print("| what | records/s | vs target | server CPU µs/record | client CPU µs/record |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows:
        server_us = "" if r.get("server_us") is None else f"{r['server_us']:.1f}"
        client_us = "" if r.get("client_us") is None else f"{r['client_us']:.1f}"
        print(
            f"| {name} | {r['rate']:,.0f} | {r['rate'] / TARGET:.2f}x | {server_us} | {client_us} |"
        )
    print()
    for name, seconds in reads:
        print(f"{name}: MetricsStore.read of {args.read:,} records: {seconds * 1000:.0f} ms")


if __name__ == "__main__":
    main()
