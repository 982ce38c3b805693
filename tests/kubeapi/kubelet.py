"""The simulated scheduler + kubelet of the single node ``workbench-node-1``.

A new pod is bound to the node (``spec.nodeName``, condition PodScheduled, event Scheduled),
gets a pod IP of its own on the loopback network (127.0.0.2, 127.0.0.3, ... never 127.0.0.1;
Linux routes all of 127/8 to ``lo``, so a process can bind its pod IP) and then:

* if ``execute(pod)`` is true, every container's ``command + args`` runs as a host process
  (no shell, own process group, cwd = ``workingDir`` or ``/``, environment = the host's PATH,
  HOME, PYTHONPATH... overlaid with the container's ``env``/``envFrom``, downward API and
  ConfigMap/Secret references resolved, ``$(VAR)`` expanded). Init containers run first, in
  order. Output (stdout and stderr merged) goes to the pod log. Exit code 0 -> Succeeded,
  else Failed; restartPolicy Always/OnFailure restart the process (restartCount + 1,
  CrashLoopBackOff waiting state, short backoff). Readiness (and startup) probes ``httpGet``,
  ``tcpSocket`` and ``exec`` are really run, at most every ``probe_period`` seconds
  (``initialDelaySeconds`` is honoured); without a probe a running container is ready.
* otherwise the pod simply becomes Running and Ready, and stays so until deleted.

Deleting a scheduled pod is graceful: the processes get SIGTERM, SIGKILL after the grace
period, then the kubelet removes the pod. Volumes are not mounted: a process sees the host's
file system, so tests must make mount paths exist on the host.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import re
import secrets
import signal

import aiohttp

from tests.kubeapi.controllers import Controller, record_event, set_condition
from tests.kubeapi.logs import Logs
from tests.kubeapi.quantity import parse_quantity
from tests.kubeapi.store import Event, Store, timestamp

log = logging.getLogger(__name__)

HOST_ENV = (
    "PATH",
    "HOME",
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "USER",
    "LOGNAME",
    "SHELL",
    "TERM",
    "PYTHONDONTWRITEBYTECODE",
    "PYENV_ROOT",
    "PYENV_VERSION",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "JAVA_HOME",
    "COVERAGE_PROCESS_START",
)
_VAR_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


class ContainerConfigError(Exception):
    """A container cannot start: its environment refers to something missing."""


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion (``$$`` escapes, unknown references stay)."""
    return _VAR_REF.sub(
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value
    )


def _pod_ip(index: int) -> str:
    """The index-th pod IP: 127.0.0.2, ..., 127.0.0.254, 127.0.1.1, ..."""
    index += 1
    return f"127.{(index // 254) // 256}.{(index // 254) % 256}.{index % 254 + 1}"


class ContainerState:
    """What the kubelet knows of one container."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.name = spec["name"]
        self.state: dict = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict = {}
        self.ready = False
        self.started = False
        self.restart_count = 0
        self.exit_code: int | None = None
        self.done = False
        self.container_id = ""
        self.process: asyncio.subprocess.Process | None = None

    def status(self) -> dict:
        entry = {
            "name": self.name,
            "state": self.state,
            "lastState": self.last_state,
            "ready": self.ready,
            "restartCount": self.restart_count,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "started": self.started,
        }
        if self.container_id:
            entry["containerID"] = self.container_id
        return entry

    def run_state(self) -> None:
        self.container_id = f"containerd://{secrets.token_hex(32)}"
        self.state = {"running": {"startedAt": timestamp()}}
        self.started = True


class PodRuntime:
    """The life of one pod on the node."""

    def __init__(self, kubelet: Kubelet, pod: dict, ip: str, execute: bool):
        self.kubelet = kubelet
        self.namespace = pod["metadata"]["namespace"]
        self.name = pod["metadata"]["name"]
        self.uid = pod["metadata"]["uid"]
        self.pod = pod
        self.ip = ip
        self.execute = execute
        spec = pod["spec"]
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.init = [ContainerState(c) for c in spec.get("initContainers") or []]
        self.containers = [ContainerState(c) for c in spec.get("containers") or []]
        self.start_time = timestamp()
        self.conditions: list[dict] = []
        self.stopping = False
        self.task: asyncio.Task | None = None
        self.probes: set[asyncio.Task] = set()

    # -- status -------------------------------------------------------------------------------

    def phase(self) -> str:
        if any(c.done and c.exit_code for c in self.init):
            return "Failed"
        if self.containers and all(c.done for c in self.containers):
            return "Succeeded" if all(c.exit_code == 0 for c in self.containers) else "Failed"
        if all(c.started for c in self.containers):
            return "Running"
        return "Pending"

    def write_status(self) -> None:
        phase = self.phase()
        ready = phase == "Running" and all(c.ready for c in self.containers)
        initialized = all(c.done and c.exit_code == 0 for c in self.init)
        times = ("lastTransitionTime",)
        reason = "PodCompleted" if phase in ("Succeeded", "Failed") else ""
        set_condition(
            self.conditions,
            "PodReadyToStartContainers",
            phase not in ("Succeeded", "Failed"),
            times=times,
        )
        set_condition(self.conditions, "Initialized", initialized, reason, times=times)
        set_condition(self.conditions, "Ready", ready, reason, times=times)
        set_condition(self.conditions, "ContainersReady", ready, reason, times=times)
        set_condition(self.conditions, "PodScheduled", True, times=times)
        for condition in self.conditions:
            condition.setdefault("lastProbeTime", None)
        status = {
            "phase": phase,
            "conditions": [dict(c) for c in self.conditions],
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time,
            "containerStatuses": [c.status() for c in self.containers],
        }
        if self.init:
            status["initContainerStatuses"] = [c.status() for c in self.init]

        def update(pod: dict) -> None:
            qos = (pod.get("status") or {}).get("qosClass")
            pod["status"] = {**status, **({"qosClass": qos} if qos else {})}

        self.kubelet.store.modify("pods", self.namespace, self.name, update)

    def event(self, reason: str, message: str, type: str = "Normal") -> None:
        pod = self.kubelet.store.get("pods", self.namespace, self.name)
        if pod is not None:
            record_event(
                self.kubelet.store, pod, reason, message, type=type, host=self.kubelet.node_name
            )

    # -- running ------------------------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"pod {self.namespace}/{self.name}")

    async def run(self) -> None:
        if not self.execute:
            for container in self.init:
                container.run_state()
                container.state = {
                    "terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "startedAt": self.start_time,
                        "finishedAt": timestamp(),
                    }
                }
                container.exit_code, container.done = 0, True
            for container in self.containers:
                container.run_state()
                container.ready = True
                self.event("Started", f"Started container {container.name}")
            self.write_status()
            return
        self.write_status()
        for container in self.init:
            while not self.stopping:
                await self.run_container(container, once=True)
                if container.exit_code == 0 or self.restart_policy == "Never":
                    break
                await self.backoff(container)
            if container.exit_code != 0:
                self.write_status()
                return
        await asyncio.gather(*(self.run_container(c) for c in self.containers))
        self.write_status()

    async def backoff(self, container: ContainerState) -> None:
        container.last_state = container.state
        container.restart_count += 1
        container.done = False
        container.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off restarting failed container={container.name} "
                f"pod={self.name}_{self.namespace}({self.uid})",
            }
        }
        self.write_status()
        await asyncio.sleep(min(0.1 * 2 ** (container.restart_count - 1), 1.0))

    async def run_container(self, container: ContainerState, once: bool = False) -> None:
        buffer = self.kubelet.logs.buffer(self.uid, container.name)
        while not self.stopping:
            buffer.reopen()
            code = await self._execute(container, buffer)
            if code is None:
                return
            finished = timestamp()
            started = container.state.get("running", {}).get("startedAt", finished)
            container.state = {
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": started,
                    "finishedAt": finished,
                    "containerID": container.container_id,
                }
            }
            container.exit_code, container.ready, container.done = code, False, True
            restart = (
                not once
                and not self.stopping
                and (
                    self.restart_policy == "Always"
                    or (self.restart_policy == "OnFailure" and code != 0)
                )
            )
            if not restart:
                buffer.close()
                self.write_status()
                return
            await self.backoff(container)

    async def _execute(self, container: ContainerState, buffer) -> int | None:
        """Run the container's process once; its exit code, or None if it cannot start."""
        spec = container.spec
        try:
            env = self.kubelet.environment(self.pod, spec, self.ip)
        except ContainerConfigError as exc:
            container.state = {
                "waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}
            }
            self.write_status()
            return None
        argv = [expand(a, env) for a in [*(spec.get("command") or []), *(spec.get("args") or [])]]
        cwd = spec.get("workingDir") or "/"
        if not argv or not os.path.isdir(cwd):
            message = (
                "the double runs only containers with a command"
                if not argv
                else f"workingDir {cwd} does not exist on this host"
            )
            container.state = {"waiting": {"reason": "CreateContainerError", "message": message}}
            self.write_status()
            return None
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            container.run_state()
            buffer.append(f"exec {argv[0]}: {exc}".encode())
            return 128
        container.process = process
        container.run_state()
        probe = spec.get("readinessProbe")
        container.ready = probe is None
        self.write_status()
        if container.restart_count == 0:
            self.event(
                "Pulled", f'Container image "{spec.get("image")}" already present on machine'
            )
            self.event("Created", f"Created container {container.name}")
            self.event("Started", f"Started container {container.name}")
        prober = None
        if probe:
            prober = asyncio.create_task(self.kubelet.probe_loop(self, container, probe))
            self.probes.add(prober)
        while line := await process.stdout.readline():
            buffer.append(line)
        code = await process.wait()
        container.process = None
        if prober:
            prober.cancel()
            self.probes.discard(prober)
        return 128 - code if code < 0 else code

    def signal(self, sig: int) -> None:
        for container in [*self.init, *self.containers]:
            if container.process and container.process.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(container.process.pid, sig)

    def running(self) -> bool:
        return any(
            c.process and c.process.returncode is None for c in [*self.init, *self.containers]
        )

    async def terminate(self, grace: float) -> None:
        """SIGTERM, SIGKILL after ``grace`` seconds, then wait for the processes to end."""
        self.stopping = True
        for probe in self.probes:
            probe.cancel()
        for container in self.containers:
            if container.started:
                self.event("Killing", f"Stopping container {container.name}")
        self.signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.running() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        self.signal(signal.SIGKILL)
        if self.task:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.task), 2.0)
            self.task.cancel()

    def kill(self) -> None:
        self.stopping = True
        self.signal(signal.SIGKILL)
        for task in [*self.probes, *([self.task] if self.task else [])]:
            task.cancel()


class Kubelet(Controller):
    """Schedules pods onto the node and runs them (see the module docstring)."""

    resources = ("pods",)

    def __init__(self, store: Store, logs: Logs, execute, node_name: str, probe_period: float):
        super().__init__(store)
        self.logs = logs
        self.execute = execute
        self.node_name = node_name
        self.probe_period = probe_period
        self.runtimes: dict[str, PodRuntime] = {}
        self._terminations: dict[str, asyncio.Task] = {}
        self._allocated = 0
        self._session: aiohttp.ClientSession | None = None

    def keys_for(self, event: Event):
        meta = event.obj["metadata"]
        return [(meta["namespace"], meta["name"], meta["uid"])]

    def node_manifest(self) -> dict:
        return {
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
            "spec": {},
        }

    def start(self) -> None:
        cpus = str(os.cpu_count() or 1)
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 1024}Ki"
        now = timestamp()

        def ready(node: dict) -> None:
            node["status"] = {
                "capacity": {"cpu": cpus, "memory": memory, "pods": "110"},
                "allocatable": {"cpu": cpus, "memory": memory, "pods": "110"},
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    }
                ],
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": self.node_name},
                ],
                "nodeInfo": {
                    "kubeletVersion": "v1.37.0",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "containerRuntimeVersion": "host://0",
                    "kernelVersion": os.uname().release,
                    "osImage": "host",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                    "kubeProxyVersion": "",
                },
            }

        self.store.modify("nodes", None, self.node_name, ready)
        super().start()

    async def stop(self) -> None:
        await super().stop()
        for task in self._terminations.values():
            task.cancel()
        for runtime in self.runtimes.values():
            runtime.kill()
        tasks = [r.task for r in self.runtimes.values() if r.task]
        await asyncio.gather(*tasks, *self._terminations.values(), return_exceptions=True)
        for runtime in self.runtimes.values():
            for container in [*runtime.init, *runtime.containers]:
                if container.process and container.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        await asyncio.wait_for(container.process.wait(), 2.0)
        self.runtimes.clear()
        if self._session:
            await self._session.close()

    def reconcile(self, key: tuple[str, str, str]) -> None:
        namespace, name, uid = key
        pod = self.store.get("pods", namespace, name)
        if pod is None or pod["metadata"]["uid"] != uid:
            runtime = self.runtimes.pop(uid, None)
            if runtime:
                runtime.kill()
            if uid not in self._terminations:
                self.logs.forget(uid)
            return
        if pod["metadata"].get("deletionTimestamp"):
            if uid not in self._terminations:
                self._terminations[uid] = asyncio.create_task(self._terminate(pod))
            return
        node = pod["spec"].get("nodeName")
        if not node:
            self.store.modify("pods", namespace, name, self._bind)
            record_event(
                self.store,
                pod,
                "Scheduled",
                f"Successfully assigned {namespace}/{name} to {self.node_name}",
                component="default-scheduler",
            )
            return
        if node != self.node_name or uid in self.runtimes:
            return
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return
        ip = _pod_ip(self._allocated)
        self._allocated += 1
        execute = bool(self.execute and self.execute(pod))
        runtime = PodRuntime(self, pod, ip, execute)
        self.runtimes[uid] = runtime
        runtime.start()

    def _bind(self, pod: dict) -> None:
        pod["spec"]["nodeName"] = self.node_name
        status = pod.setdefault("status", {"phase": "Pending"})
        conditions = status.setdefault("conditions", [])
        set_condition(conditions, "PodScheduled", True)
        for condition in conditions:
            condition.setdefault("lastProbeTime", None)

    async def _terminate(self, pod: dict) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        try:
            runtime = self.runtimes.pop(uid, None)
            if runtime:
                await runtime.terminate(meta.get("deletionGracePeriodSeconds") or 0)
            self.store.finish_deletion("pods", meta["namespace"], meta["name"])
        finally:
            self._terminations.pop(uid, None)
            if self.store.by_uid(uid) is None:
                self.logs.forget(uid)

    # -- container environment and probes -----------------------------------------------------

    def _field(self, pod: dict, path: str, ip: str) -> str:
        meta, spec = pod["metadata"], pod["spec"]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if match:
            return (meta.get(match.group(1)) or {}).get(match.group(2), "")
        values = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": self.node_name,
            "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
            "status.podIP": ip,
            "status.podIPs": ip,
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
        }
        if path not in values:
            raise ContainerConfigError(f"unsupported fieldRef {path}")
        return values[path]

    def _reference(self, namespace: str, ref: dict, kind: str) -> dict | None:
        resource = "configmaps" if kind == "ConfigMap" else "secrets"
        obj = self.store.get(resource, namespace, ref.get("name", ""))
        if obj is None:
            if ref.get("optional"):
                return None
            raise ContainerConfigError(f'{kind.lower()} "{ref.get("name")}" not found')
        data = dict(obj.get("data") or {})
        if kind == "Secret":
            data = {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
        return data

    def environment(self, pod: dict, container: dict, ip: str) -> dict[str, str]:
        """The process environment of a container (host basics + what the pod declares)."""
        namespace = pod["metadata"]["namespace"]
        env = {k: os.environ[k] for k in HOST_ENV if k in os.environ}
        env["HOSTNAME"] = pod["metadata"]["name"]
        for source in container.get("envFrom") or []:
            for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if field in source:
                    data = self._reference(namespace, source[field], kind) or {}
                    env.update({source.get("prefix", "") + k: v for k, v in data.items()})
        for var in container.get("env") or []:
            name, source = var["name"], var.get("valueFrom")
            if source is None:
                env[name] = expand(var.get("value", ""), env)
            elif "fieldRef" in source:
                env[name] = self._field(pod, source["fieldRef"]["fieldPath"], ip)
            elif "resourceFieldRef" in source:
                ref = source["resourceFieldRef"]
                field, _, resource = ref["resource"].partition(".")
                value = ((container.get("resources") or {}).get(field) or {}).get(resource)
                divisor = parse_quantity(ref.get("divisor", "1"))
                env[name] = str(-(-parse_quantity(value) // divisor)) if value else "0"
            else:
                for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    if field in source:
                        ref = source[field]
                        data = self._reference(namespace, ref, kind)
                        if data is not None and ref["key"] in data:
                            env[name] = data[ref["key"]]
                        elif not ref.get("optional"):
                            raise ContainerConfigError(
                                f"couldn't find key {ref['key']} in {kind} "
                                f"{namespace}/{ref.get('name')}"
                            )
        return env

    async def _check(self, runtime: PodRuntime, container: ContainerState, probe: dict) -> bool:
        timeout = probe.get("timeoutSeconds", 1)
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = self._port(container.spec, get.get("port"))
            scheme = get.get("scheme", "HTTP").lower()
            url = f"{scheme}://{get.get('host') or runtime.ip}:{port}{get.get('path', '/')}"
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
            if self._session is None:
                self._session = aiohttp.ClientSession()
            try:
                async with self._session.get(
                    url,
                    headers=headers,
                    ssl=False,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                ) as response:
                    return 200 <= response.status < 400
            except (aiohttp.ClientError, TimeoutError, OSError):
                return False
        if "tcpSocket" in probe:
            port = self._port(container.spec, probe["tcpSocket"].get("port"))
            host = probe["tcpSocket"].get("host") or runtime.ip
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            except (OSError, TimeoutError):
                return False
            writer.close()
            return True
        if "exec" in probe:
            env = self.environment(runtime.pod, container.spec, runtime.ip)
            try:
                process = await asyncio.create_subprocess_exec(
                    *probe["exec"]["command"],
                    env=env,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                    start_new_session=True,
                )
                return await asyncio.wait_for(process.wait(), timeout) == 0
            except (OSError, TimeoutError):
                return False
        return True  # grpc probes: not modelled, count as success

    @staticmethod
    def _port(container: dict, port) -> int:
        if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
            return int(port)
        for declared in container.get("ports") or []:
            if declared.get("name") == port:
                return declared["containerPort"]
        raise ContainerConfigError(f"port {port!r} not found in container ports")

    async def probe_loop(self, runtime: PodRuntime, container: ContainerState, probe: dict) -> None:
        """Readiness: ready after successThreshold successes, unready after failureThreshold
        failures; checked every min(periodSeconds, probe_period) seconds."""
        await asyncio.sleep(probe.get("initialDelaySeconds", 0))
        period = min(probe.get("periodSeconds", 10), self.probe_period)
        successes = failures = 0
        while True:
            try:
                ok = await self._check(runtime, container, probe)
            except ContainerConfigError:
                ok = False
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if not container.ready and successes >= probe.get("successThreshold", 1):
                container.ready = True
                runtime.write_status()
            elif container.ready and failures >= probe.get("failureThreshold", 3):
                container.ready = False
                runtime.write_status()
            await asyncio.sleep(period)
