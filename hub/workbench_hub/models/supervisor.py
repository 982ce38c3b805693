"""Keeps each deployment's replicas running, healthy and routed (docs/models.md).

The database says what should serve (deployments in ``deploying``/``running`` with their replica
count and generation); the runtime says what runs (workloads labelled with their deployment,
generation and slot). Every ``interval`` the supervisor starts what is missing (a crashed
replica again after a growing delay), checks each replica's ``/health``, routes the model to its
ready replicas and retires what is no longer wanted. A newer deployment or generation takes over
only when all its replicas are ready (rolling: old and new serve side by side until then), so a
redeploy, a restart or a failed deployment never leaves the model without replicas.
"""

import asyncio
import contextlib
import hashlib
import hmac
import math
import os
import secrets
import sys
import time
from dataclasses import dataclass

import httpx
from sqlalchemy import select
from sqlalchemy.orm import selectinload
from traitlets import Any, Bool, Float, Instance, Int, TraitError, Unicode, default
from traitlets.config import LoggingConfigurable

from workbench_hub.models import ACTIVE_DEPLOYMENT_STATES, secret_hash
from workbench_hub.models.routes import ProxyRoutes
from workbench_hub.models.stats import DeploymentStats
from workbench_hub.orm import Model, ModelDeployment, utcnow
from workbench_hub.runtime.base import (
    ACTIVE_PHASES,
    KIND_LABEL,
    LABEL_PREFIX,
    ReplicatedStatus,
    Resources,
    VolumeMount,
    WorkloadSpec,
    WorkloadStatus,
)

MODEL_LABEL = LABEL_PREFIX + "model"
DEPLOYMENT_LABEL = LABEL_PREFIX + "deployment"
GENERATION_LABEL = LABEL_PREFIX + "generation"
SLOT_LABEL = LABEL_PREFIX + "slot"


def model_prefix(project: str, model: str) -> str:
    """The path under the hub's public URL where a model is served."""
    return f"/models/{project}/{model}"


@dataclass
class _Slot:
    """Restart bookkeeping of one replica slot of a deployment generation."""

    failures: int = 0
    not_before: float = 0.0
    last_error: str = ""


@dataclass(frozen=True)
class _Replica:
    name: str
    deployment_id: int
    generation: int
    slot: int
    status: WorkloadStatus

    @property
    def url(self) -> str | None:
        return _url(self.status)


def _url(status: WorkloadStatus) -> str | None:
    """Where the control plane reaches a replica's server."""
    endpoint = status.endpoints.get("http")
    return f"http://{endpoint}" if endpoint else None


def _replica(status: WorkloadStatus) -> _Replica | None:
    try:
        return _Replica(
            name=status.name,
            deployment_id=int(status.labels[DEPLOYMENT_LABEL]),
            generation=int(status.labels[GENERATION_LABEL]),
            slot=int(status.labels[SLOT_LABEL]),
            status=status,
        )
    except (KeyError, ValueError):
        return None


class ModelSupervisor(LoggingConfigurable):
    """Reconciles deployments with replica workloads and the proxy's routes."""

    db = Any(help="the workbench Database (workbench_hub.db)")
    runtime = Any(help="the Runtime that runs replicas")
    builder = Any(help="the ModelBuilder")

    interval = Float(1.0, help="Seconds between two reconciliations.").tag(config=True)
    health_timeout = Float(2.0, help="Seconds a replica's /health may take to answer.").tag(
        config=True
    )
    ready_timeout = Float(
        180.0,
        help="""Seconds a new deployment's replicas may take to become ready before the
        deployment is marked failed (the previous deployment keeps serving).""",
    ).tag(config=True)
    start_failures = Int(
        3,
        help="""Crashes of one replica slot of a deploying deployment after which it is marked
        failed. A running deployment's replicas are restarted without limit, with backoff.""",
    ).tag(config=True)
    backoff_max = Float(
        60.0, help="Longest wait before restarting a crashed replica (doubles from 1 s)."
    ).tag(config=True)
    drain_seconds = Float(
        2.0,
        help="""Seconds between taking a replica out of the route and stopping it, for requests
        already on their way to it.""",
    ).tag(config=True)
    stop_grace = Float(
        20.0, help="Seconds a retired replica gets to finish requests and flush metrics."
    ).tag(config=True)
    queue_limit = Int(64, help="Requests one replica queues before answering 429.").tag(config=True)
    max_body_bytes = Int(1024**2, help="Largest request body a replica accepts (413).").tag(
        config=True
    )
    replica_threads = Int(
        1, help="Worker threads of a replica that run a synchronous function."
    ).tag(config=True)
    replica_inline = Bool(
        True,
        help="""Let a replica call a synchronous function that has proved fast on its event
        loop's thread (faster for sub-millisecond models; a call that suddenly becomes slow then
        holds up the replica until it ends). Off: always a worker thread.""",
    ).tag(config=True)
    stop_replicas_on_exit = Bool(
        False,
        help="""Stop every replica (letting it flush its metrics) when the control plane stops
        cleanly. For `workbench up`, where replicas end with the workbench anyway. Off: replicas
        keep serving across control plane restarts and are adopted by the next start.""",
    ).tag(config=True)
    control_url = Unicode(
        help="""API base URL the replicas call (access keys, metrics, stats). Default: the
        control plane's own address and prefix.""",
    ).tag(config=True)
    public_url = Unicode(
        help="Public URL of the hub (for model URLs). Default: the service's public_hub_url."
    ).tag(config=True)

    token_secret = Unicode(
        help="""Secret from which each deployment's replica token is derived (HMAC of its CRN),
        so that replicas started before and after a control plane restart hold valid tokens.
        Default: the service's hub API token ($JUPYTERHUB_API_TOKEN).""",
    ).tag(config=True)

    @default("token_secret")
    def _token_secret_default(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    routes = Instance(ProxyRoutes, allow_none=True)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        service = self.parent
        if not self.control_url and service is not None:
            self.control_url = f"http://127.0.0.1:{service.port}{service.service_prefix}api/v1"
        if not self.public_url and service is not None:
            self.public_url = service.public_hub_url
        if not self.token_secret:
            raise TraitError(
                "ModelSupervisor.token_secret is empty: run the control plane as a JupyterHub"
                " service (JUPYTERHUB_API_TOKEN) or set it"
            )
        if self.routes is None:
            self.routes = ProxyRoutes(parent=self)
        self.stats = DeploymentStats()
        self._slots: dict[tuple[int, int, int], _Slot] = {}
        self._deploying_since: dict[int, float] = {}
        self._routed: dict[str, list[str]] = {}
        self._retiring: set[str] = set()
        self._ready: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._http = httpx.AsyncClient(timeout=self.health_timeout)
        # access keys: a version per model, answered to the replicas' long polls
        self._boot = secrets.randbelow(2**30)
        self._key_versions: dict[int, int] = {}
        self._key_changed: dict[int, asyncio.Event] = {}

    # ---- public API used by the handlers

    def deployment_token(self, crn: str) -> str:
        """The secret a deployment's replicas present; derived, so it survives restarts."""
        secret = self.token_secret.encode()
        return hmac.new(secret, b"deployment:" + crn.encode(), hashlib.sha256).hexdigest()

    def deployment_token_hash(self, crn: str) -> str:
        return secret_hash(self.deployment_token(crn))

    def poke(self) -> None:
        """Reconcile now (a deployment was created or changed)."""
        self._wake.set()

    def keys_version(self, model_id: int) -> int:
        return self._key_versions.setdefault(model_id, self._boot)

    def keys_changed(self, model_id: int) -> None:
        """Wake the replicas' long polls for this model's access keys."""
        self._key_versions[model_id] = self.keys_version(model_id) + 1
        event = self._key_changed.pop(model_id, None)
        if event is not None:
            event.set()

    async def wait_keys_changed(self, model_id: int, version: int, seconds: float) -> None:
        """Return when the model's key version differs from ``version`` or after ``seconds``."""
        if version != self.keys_version(model_id):
            return
        event = self._key_changed.setdefault(model_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    def is_ready(self, replica: str) -> bool:
        return replica in self._ready

    async def replicas_of(self, deployment_id: int) -> list[WorkloadStatus]:
        selector = {DEPLOYMENT_LABEL: str(deployment_id)}
        if self.runtime.manages_rollouts:
            workloads = await self.runtime.list_replicas(selector)
        else:
            workloads = await self.runtime.list(selector)
        return sorted(workloads, key=lambda w: w.created)

    # ---- loop

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop supervising; replicas keep serving and are adopted by the next start."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.stop_replicas_on_exit:
            replicas = await self.runtime.list({KIND_LABEL: "model-replica"})
            await asyncio.gather(
                *(
                    self.runtime.stop(r.name, grace=min(self.stop_grace, 5.0))
                    for r in replicas
                    if r.phase in ACTIVE_PHASES
                ),
                return_exceptions=True,
            )
        await self._http.aclose()
        await self.routes.close()

    async def _loop(self) -> None:
        checked_routes = 0.0
        while True:
            try:
                verify = time.monotonic() - checked_routes > 10
                await self.reconcile(verify_routes=verify)
                if verify:
                    checked_routes = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("Reconciling model deployments failed; trying again")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- one reconciliation

    async def reconcile(self, verify_routes: bool = False) -> None:
        """Bring replicas and routes in line with the database, once."""
        async with self.db.session() as session:
            models = (
                await session.scalars(
                    select(Model)
                    .join(ModelDeployment, ModelDeployment.model_id == Model.id)
                    .where(ModelDeployment.state.in_(ACTIVE_DEPLOYMENT_STATES))
                    .options(selectinload(Model.project))
                    .distinct()
                )
            ).all()
            active = (
                await session.scalars(
                    select(ModelDeployment)
                    .where(ModelDeployment.state.in_(ACTIVE_DEPLOYMENT_STATES))
                    .options(selectinload(ModelDeployment.build))
                    .order_by(ModelDeployment.number)
                )
            ).all()
        by_model: dict[int, list[ModelDeployment]] = {}
        for deployment in active:
            by_model.setdefault(deployment.model_id, []).append(deployment)
        if self.runtime.manages_rollouts:
            await self._reconcile_rollouts(models, by_model)
        else:
            await self._reconcile_replicas(models, by_model)
        routed_prefixes = {model_prefix(m.project.name, m.name) for m in models}
        for prefix in list(self._routed):
            if prefix not in routed_prefixes:
                await self._set_route(prefix, [])
        if verify_routes and self.routes.enabled:
            await self._verify_routes()

    async def _reconcile_replicas(
        self, models: list[Model], by_model: dict[int, list[ModelDeployment]]
    ) -> None:
        """Replica by replica: the supervisor starts, checks, routes and retires each one."""
        replicas = [
            r
            for r in map(_replica, await self.runtime.list({KIND_LABEL: "model-replica"}))
            if r is not None
        ]
        await self._check_health([r.status for r in replicas if r.status.phase == "running"])
        wanted: set[str] = set()
        for model in models:
            wanted |= await self._reconcile_model(model, by_model.get(model.id, []), replicas)
        for replica in replicas:
            if replica.name not in wanted:
                self._retire(replica)

    async def _reconcile_rollouts(
        self, models: list[Model], by_model: dict[int, list[ModelDeployment]]
    ) -> None:
        """A runtime that rolls out itself (Kubernetes): one replicated workload per model,
        re-applied with the newest active deployment; the runtime keeps the old replicas
        serving until the new ones are ready. A deployment not rolled out in time is marked
        failed, and the next pass re-applies the one it was replacing (a rollback)."""
        existing = {
            w.name: w for w in await self.runtime.list_replicated({KIND_LABEL: "model-replica"})
        }
        wanted: set[str] = set()
        now = time.monotonic()
        for model in models:
            deployments = by_model.get(model.id, [])
            target = deployments[-1]
            name = f"model-{model.id}"
            wanted.add(name)
            prefix = model_prefix(model.project.name, model.name)
            since = self._deploying_since.setdefault(target.id, now)
            try:
                spec = await self._replica_spec(model, target, name, None)
                status: ReplicatedStatus = await self.runtime.apply_replicated(
                    spec, target.replicas
                )
            except ValueError as exc:
                await self._finish_deployment(target, "failed", str(exc))
                continue
            if status.rolled_out:
                await self._mark_running(target, [d for d in deployments if d is not target])
            elif target.state == "deploying" and now - since > self.ready_timeout:
                await self._finish_deployment(
                    target, "failed", f"not rolled out after {self.ready_timeout:.0f} s"
                )
            # during a rollout the endpoint balances over the old replicas until new ones are ready
            serving = status.ready > 0 or target.state == "running" or len(deployments) > 1
            targets = [f"http://{status.endpoint}"] if status.endpoint and serving else []
            await self._set_route(prefix, targets)
        for name in existing.keys() - wanted:
            await self.runtime.remove_replicated(name)
        # each replica's own health, for the API's replica lists and ready counts
        replicas = await self.runtime.list_replicas({KIND_LABEL: "model-replica"})
        await self._check_health([r for r in replicas if r.phase == "running"])

    async def _check_health(self, replicas: list[WorkloadStatus]) -> None:
        async def check(replica: WorkloadStatus, url: str) -> None:
            try:
                response = await self._http.get(f"{url}/health")
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                self._ready.add(replica.name)
            else:
                self._ready.discard(replica.name)

        await asyncio.gather(*(check(r, url) for r in replicas if (url := _url(r))))

    async def _reconcile_model(
        self, model: Model, deployments: list[ModelDeployment], replicas: list[_Replica]
    ) -> set[str]:
        """Replicas of one model; returns the names that should keep running."""
        target = deployments[-1]  # the newest active deployment
        mine = [r for r in replicas if r.deployment_id in {d.id for d in deployments}]
        current = [
            r
            for r in mine
            if r.deployment_id == target.id
            and r.generation == target.generation
            and r.slot < target.replicas
        ]
        keep = {r.name for r in current if r.status.phase in ACTIVE_PHASES}
        failed = await self._fill_slots(model, target, current)
        ready_current = [r for r in current if r.name in self._ready]
        for replica in ready_current:
            self._slots.pop((target.id, target.generation, replica.slot), None)
        previous = [r for r in mine if r.name not in {c.name for c in current}]
        ready_previous = [r for r in previous if r.name in self._ready]
        complete = len({r.slot for r in ready_current}) >= target.replicas
        if failed:
            await self._finish_deployment(target, "failed", failed)
            # the previous deployment keeps serving: it is still active in the database
            keep = set()
            ready_current = []
            complete = False
        if complete:
            await self._mark_running(target, [d for d in deployments if d is not target])
            serving = ready_current
        else:
            serving = ready_current + ready_previous
            keep |= {r.name for r in previous if r.status.phase in ACTIVE_PHASES}
        await self._set_route(
            model_prefix(model.project.name, model.name),
            [r.url for r in sorted(serving, key=lambda r: r.name) if r.url],
        )
        return keep

    async def _fill_slots(
        self, model: Model, deployment: ModelDeployment, current: list[_Replica]
    ) -> str:
        """Start a replica for each empty slot; a non-empty result is why the deployment failed."""
        now = time.monotonic()
        self._deploying_since.setdefault(deployment.id, now)
        for slot_number in range(deployment.replicas):
            key = (deployment.id, deployment.generation, slot_number)
            in_slot = [r for r in current if r.slot == slot_number]
            if any(r.status.phase in ACTIVE_PHASES for r in in_slot):
                continue
            slot = self._slots.setdefault(key, _Slot())
            for dead in in_slot:
                if dead.name in self._retiring:
                    continue
                slot.failures += 1
                slot.last_error = await self._last_error(dead)
                slot.not_before = now + min(2 ** (slot.failures - 1), self.backoff_max)
                self.log.warning(
                    "Replica %s of %s exited (%s); restart %d in %.0fs",
                    dead.name,
                    deployment.crn,
                    slot.last_error or dead.status.message,
                    slot.failures,
                    slot.not_before - now,
                )
                self._retiring.add(dead.name)
                self._spawn(self._remove(dead.name))
            if deployment.state == "deploying" and slot.failures >= self.start_failures:
                return slot.last_error or "its replicas keep exiting"
            if now >= slot.not_before:
                await self._start_replica(model, deployment, slot_number)
        if (
            deployment.state == "deploying"
            and now - self._deploying_since[deployment.id] > self.ready_timeout
        ):
            return f"its replicas were not ready after {self.ready_timeout:.0f} s"
        return ""

    async def _last_error(self, replica: _Replica) -> str:
        lines: list[str] = []
        with contextlib.suppress(Exception):
            async for line in self.runtime.logs(replica.name):
                if line.strip():
                    lines.append(line.strip())
                    del lines[:-1]
        return lines[-1] if lines else f"exit code {replica.status.exit_code}"

    async def _start_replica(self, model: Model, deployment: ModelDeployment, slot: int) -> None:
        name = f"mdl-{deployment.id}-{deployment.generation}-{slot}-{secrets.token_hex(3)}"
        try:
            spec = await self._replica_spec(model, deployment, name, slot)
            await self.runtime.start(spec)
        except ValueError as exc:
            slot_state = self._slots.setdefault(
                (deployment.id, deployment.generation, slot), _Slot()
            )
            slot_state.failures += 1
            slot_state.last_error = str(exc)
            slot_state.not_before = time.monotonic() + self.backoff_max
            self.log.error("Cannot start a replica of %s: %s", deployment.crn, exc)
        else:
            self.log.info("Started replica %s of %s", name, deployment.crn)

    async def _replica_spec(
        self, model: Model, deployment: ModelDeployment, name: str, slot: int | None
    ) -> WorkloadSpec:
        """What a replica runs. ``slot`` None: the spec of a whole replicated workload, whose
        replicas name themselves after their host (a pod's name)."""
        build = deployment.build
        prefix = model_prefix(model.project.name, model.name)
        python = build.path and f"{build.path}/env/bin/python"
        if not (python and await asyncio.to_thread(os.path.isfile, python)):
            python = sys.executable
        profile = next(
            (p for p in self.parent.resource_profiles if p["name"] == deployment.profile), None
        )
        resources = (
            Resources(cpu=profile["cpu"], memory=profile["memory"], gpu=profile.get("gpu", 0))
            if profile
            else Resources()
        )
        threads = str(math.ceil(resources.cpu)) if resources.cpu else "1"
        env = {
            "OMP_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
            **{k: str(v) for k, v in deployment.env.items()},
            "WORKBENCH_DEPLOYMENT_TOKEN": self.deployment_token(deployment.crn),
            "WORKBENCH_API_URL": self.control_url,
            "WORKBENCH_PROJECT": model.project.name,
            "CDSW_PROJECT": model.project.name,
            "CDSW_PROJECT_ID": str(model.project.id),
            "CDSW_ENGINE_ID": name,
            "CDSW_MODEL_ID": model.crn,
            "CDSW_MODEL_DEPLOYMENT_CRN": deployment.crn,
            "CDSW_API_URL": self.control_url,
            "CDSW_DOMAIN": self.public_url.split("://", 1)[-1],
        }
        labels = {
            MODEL_LABEL: str(model.id),
            DEPLOYMENT_LABEL: str(deployment.id),
            GENERATION_LABEL: str(deployment.generation),
        }
        if slot is not None:
            labels[SLOT_LABEL] = str(slot)
        return WorkloadSpec(
            name=name,
            kind="model-replica",
            user=deployment.created_by,
            project=model.project.name,
            command=[
                python,
                "-m",
                "workbench_serving",
                "--file",
                build.file,
                "--function",
                build.function,
                "--prefix",
                prefix,
                "--control-url",
                self.control_url,
                "--deployment-crn",
                deployment.crn,
                *(["--replica", name] if slot is not None else []),
                "--max-body-bytes",
                str(self.max_body_bytes),
                "--queue-limit",
                str(self.queue_limit),
                "--threads",
                str(self.replica_threads),
                *([] if self.replica_inline else ["--no-inline"]),
            ],
            working_dir=f"{build.path}/src",
            env=env,
            resources=resources,
            labels=labels,
            ports={"http": 8080},
            volumes=[VolumeMount(source=build.path, target=build.path, read_only=True)],
        )

    async def _mark_running(self, target: ModelDeployment, older: list[ModelDeployment]) -> None:
        if target.state == "running" and not older:
            return
        async with self.db.session() as session:
            row = await session.get(ModelDeployment, target.id)
            if row.state == "deploying":
                row.state = "running"
                row.started_at = utcnow()
                row.message = ""
            for old in older:
                old_row = await session.get(ModelDeployment, old.id)
                if old_row.state in ACTIVE_DEPLOYMENT_STATES:
                    old_row.state = "superseded"
                    old_row.stopped_at = utcnow()
            await session.commit()
        self._deploying_since.pop(target.id, None)
        self.log.info("Deployment %s is serving", target.crn)

    async def _finish_deployment(self, deployment: ModelDeployment, state: str, why: str) -> None:
        async with self.db.session() as session:
            row = await session.get(ModelDeployment, deployment.id)
            row.state = state
            row.message = f"replicas did not become ready: {why}"
            row.stopped_at = utcnow()
            await session.commit()
        self._deploying_since.pop(deployment.id, None)
        self.log.warning("Deployment %s failed: %s", deployment.crn, why)

    # ---- retiring replicas

    def _retire(self, replica: _Replica) -> None:
        """Stop a replica that is no longer wanted, after it has left the route."""
        if replica.name in self._retiring:
            return
        self._retiring.add(replica.name)
        self._spawn(self._drain_and_remove(replica))

    async def _drain_and_remove(self, replica: _Replica) -> None:
        if replica.status.phase in ACTIVE_PHASES:
            await asyncio.sleep(self.drain_seconds)
            with contextlib.suppress(Exception):
                await self.runtime.stop(replica.name, grace=self.stop_grace)
        await self._remove(replica.name)

    async def _remove(self, name: str) -> None:
        try:
            await self.runtime.remove(name)
        finally:
            self._ready.discard(name)
            self._retiring.discard(name)

    # ---- routes

    async def _set_route(self, prefix: str, targets: list[str]) -> None:
        if self._routed.get(prefix, []) == targets:
            return
        if not self.routes.enabled:
            self._routed[prefix] = targets
            return
        try:
            if targets:
                await self.routes.set(prefix, targets)
                self._routed[prefix] = targets
            else:
                await self.routes.delete(prefix)
                self._routed.pop(prefix, None)
        except httpx.HTTPError as exc:
            self.log.warning("Could not update the proxy route %s: %s", prefix, exc)

    async def _verify_routes(self) -> None:
        """Put back routes the proxy lost (it restarted) and drop ones nobody owns."""
        try:
            actual = await self.routes.list()
        except httpx.HTTPError as exc:
            self.log.warning("Could not read the proxy's routes: %s", exc)
            return
        for prefix, targets in list(self._routed.items()):
            if actual.get(prefix) != targets:
                self._routed.pop(prefix)
                await self._set_route(prefix, targets)
        for prefix in actual:
            if prefix.startswith("/models/") and prefix not in self._routed:
                with contextlib.suppress(httpx.HTTPError):
                    await self.routes.delete(prefix)
