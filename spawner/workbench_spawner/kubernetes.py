"""`WorkbenchKubeSpawner`: a workbench session as a pod in its user's own namespace.

KubeSpawner does the pod: its manifest, creation, reflectors (watches) of pods and events,
progress, stop. This subclass adds the workbench contract (spawn form, project and profile
checked against the control plane) and, before each start, brings the user's namespace in
shape through :class:`workbench_hub.kube.namespaces.UserNamespaces`: service account, Spark
role, quota, limits, network policy and one NFS volume pair per project the user may use,
pruning pairs of projects they lost. See docs/kubernetes.md.
"""

from jupyterhub.spawner import SpawnException
from kubespawner import KubeSpawner
from traitlets import Instance, default

from workbench_hub.kube.api import ApiException, KubeAPI, status_message
from workbench_hub.kube.namespaces import NamespaceTerminating, UserNamespaces
from workbench_hub.kube.workload_objects import POD_IP_ENV

from .session import WorkbenchSpawnerMixin


def _refusal(error: ApiException) -> str:
    """What the API server said, for the user (its Status message, not the HTTP dump)."""
    message = status_message(error)
    if "exceeded quota" in message:
        return (
            f"Your namespace's quota does not allow this session ({message}). Choose a smaller "
            "profile, or stop other sessions, jobs or models."
        )
    return f"Kubernetes refused the session: {message}"


class WorkbenchKubeSpawner(WorkbenchSpawnerMixin, KubeSpawner):
    """Start a workbench session in the user's namespace, with their projects mounted.

    Every project the user may use is mounted at its path (read-only for viewers, through a
    read-only volume); the session starts in its own project's directory. The resource
    profile becomes requests and limits (requests = limits: Guaranteed QoS), GPUs
    ``nvidia.com/gpu``; KubeSpawner's `node_selector` and `tolerations` put sessions on the
    workload nodes.
    """

    user_namespaces = Instance(UserNamespaces)

    @default("user_namespaces")
    def _default_user_namespaces(self):
        return UserNamespaces(parent=self)

    @default("enable_user_namespaces")
    def _default_enable_user_namespaces(self):
        return True

    @default("service_account")
    def _default_service_account(self):
        return self.user_namespaces.service_account

    @default("default_url")
    def _default_default_url(self):
        return "/lab"

    @default("cmd")
    def _default_cmd(self):
        return ["python", "-m", "workbench_lab.singleuser"]

    @default("automount_service_account_token")
    def _default_automount_service_account_token(self):
        return True  # Spark's driver creates executor pods with it

    state_objects: list[str] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # KubeSpawner names the namespace from its own template; ours is UserNamespaces'
        # (shared with the control plane). A namespace kept in the state wins (load_state).
        self.namespace = self.user_namespaces.namespace(self.user.name)
        self.dns_name = self.dns_name_template.format(namespace=self.namespace, name=self.pod_name)

    def _apply_session(self) -> None:
        """Turn the authorized project and profile into KubeSpawner's settings."""
        projects = self._spawn_options.projects
        self.volumes = [
            {
                "name": f"project-{p.name}",
                "persistentVolumeClaim": {
                    "claimName": self.user_namespaces.claim_name(self.user.name, p.name),
                    "readOnly": p.read_only,
                },
            }
            for p in projects
        ]
        self.volume_mounts = [
            {"name": f"project-{p.name}", "mountPath": p.path, "readOnly": p.read_only}
            for p in projects
        ]
        self.working_dir = self._access.path
        self.notebook_dir = self._access.path.replace("{", "{{").replace("}", "}}")
        profile = self._resources
        self.cpu_limit = self.cpu_guarantee = profile.cpu
        self.mem_limit = self.mem_guarantee = profile.memory
        gpus = {"nvidia.com/gpu": str(profile.gpu)} if profile.gpu else {}
        self.extra_resource_limits = dict(gpus)
        self.extra_resource_guarantees = dict(gpus)

    async def start(self):
        """Authorize, then let KubeSpawner start the pod (after the namespace is ensured)."""
        self._access, self._resources = await self._authorize()
        self._apply_session()
        try:
            url = await super().start()
        except ApiException as e:
            raise SpawnException(_refusal(e), reason="kubernetes", status_code=e.status) from None
        self._session_started()
        return url

    async def load_user_options(self):
        """Nothing: the profile was applied by :meth:`start` from the control plane's profiles
        (KubeSpawner's own ``profile_list`` is not used)."""

    def _kube_api(self) -> KubeAPI:
        """Our dict client on KubeSpawner's own (shared) API client."""
        return KubeAPI(self.api.api_client, timeout=self.k8s_api_request_timeout)

    async def _ensure_namespace(self):
        """Create or update the user's namespace objects and project volumes (KubeSpawner
        calls this before creating the pod)."""
        api = self._kube_api()
        projects = {p.name: p.read_only for p in self._spawn_options.projects}
        try:
            result = await self.user_namespaces.ensure(
                api, self.user.name, projects, groups=[g.name for g in self.user.groups]
            )
        except NamespaceTerminating as e:
            raise SpawnException(str(e), reason="namespace_terminating", status_code=409) from None
        if result.created or result.removed:
            self.log.info(
                "Namespace %s: created %s, removed %s",
                result.namespace,
                ", ".join(result.created) or "nothing",
                ", ".join(result.removed) or "nothing",
            )
        self.state_objects = sorted({*self.state_objects, *result.created} - set(result.removed))

    def get_env(self):
        """KubeSpawner's environment, the workbench variables and the pod's IP (downward API)."""
        env = super().get_env()
        env.update(self.workbench_env())
        env[POD_IP_ENV] = {"valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
        env["WORKBENCH_SERVICE_ACCOUNT"] = self.service_account  # Spark's executors run as it
        return env

    def get_state(self):
        """KubeSpawner's and the workbench's state, plus the namespace objects created."""
        state = super().get_state()
        if self.state_objects:
            state["namespace_objects"] = list(self.state_objects)
        return state

    def load_state(self, state):
        """Restore what :meth:`get_state` saved."""
        super().load_state(state)
        self.state_objects = list(state.get("namespace_objects", []))

    async def delete_forever(self):
        """With ``UserNamespaces.delete_on_user_removal``: when the user's last server is
        deleted for good, delete their namespace and project volumes (files on NFS stay)."""
        await super().delete_forever()
        if not self.user_namespaces.delete_on_user_removal:
            return
        # the default server ("") is never a session (JupyterHub keeps a record of it anyway)
        others = set(self.user.orm_user.orm_spawners) - {self.name, ""}
        if others:
            self.log.info(
                "Keeping namespace %s: %s has sessions %s",
                self.namespace,
                self.user.name,
                sorted(others),
            )
            return
        api = self._kube_api()
        self.log.info("Deleting namespace %s of %s", self.namespace, self.user.name)
        await self.user_namespaces.delete(api, self.user.name)
