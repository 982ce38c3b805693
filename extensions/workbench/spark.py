"""Spark in workbench sessions and job runs: one call gives an ordinary SparkSession.

    import workbench.spark
    spark = workbench.spark.session()                          # local[N] or executors on Kubernetes
    spark = workbench.spark.session({"spark.sql.shuffle.partitions": 8}, app_name="etl")

Configuration is merged, lowest first, from:

1. the environment: ``local_conf`` (one machine) or ``kubernetes_conf`` (in a cluster);
2. admin defaults, a JSON object in the file named by ``WORKBENCH_SPARK_DEFAULTS``;
3. ``spark-defaults.conf`` in the project root (``WORKBENCH_PROJECT_DIR``, else the current
   directory), in Spark's ``key value`` / ``key=value`` format;
4. the call's arguments: a ``conf`` dict, then keyword arguments (``master`` and ``app_name``
   are ``spark.master`` and ``spark.app.name``; otherwise underscores stand for dots, so
   ``spark_executor_memory="2g"`` is ``spark.executor.memory``).

On Kubernetes the executor count stays bounded by the admin maximum and the namespace quota
whatever the layers above say. Inside a session the Spark UI is served through the session's
own proxy at ``<JUPYTERHUB_SERVICE_PREFIX>workbench/spark/ui/<port>/``; the running
application is recorded in ``registry_dir()`` for the server extension. pyspark is imported
only by ``session()``.
"""

import atexit
import contextlib
import json
import math
import os
import re
import resource
import shutil
import socket
import ssl
import tempfile
import urllib.request
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import urlparse

from .errors import WorkbenchError

__all__ = [
    "SparkConfigError",
    "SparkQuotaError",
    "SparkSetupError",
    "executor_pod_template",
    "executors_within_quota",
    "find_java",
    "kubernetes_conf",
    "local_conf",
    "merge",
    "parse_quantity",
    "read_defaults_file",
    "registry_dir",
    "session",
    "spark_conf",
    "ui_path",
]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DRIVER_LABEL = "workbench.jupyter.org/spark-driver"
EXECUTOR_CONTAINER = "spark-kubernetes-executor"
MAX_EXECUTORS = "spark.dynamicAllocation.maxExecutors"
IMAGE = "spark.kubernetes.container.image"
DRIVER_MEMORY_FRACTION = 0.6
MIB = 1024**2
GIB = 1024**3


class SparkSetupError(WorkbenchError):
    """Spark cannot start in this session: the message says what to fix."""

    def __init__(self, message):
        super().__init__(None, message)


class SparkConfigError(SparkSetupError):
    """A configuration file or value is malformed."""


class SparkQuotaError(SparkSetupError):
    """The namespace's ResourceQuota leaves no room for a single executor."""


# -- configuration layers ------------------------------------------------------------------


def _spark_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def merge(*layers):
    """Merge configuration dicts, later layers winning; values become Spark strings."""
    merged = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            merged[str(key)] = _spark_value(value)
    return merged


_LINE = re.compile(r"(?P<key>[^\s=]+)\s*(?:=|\s)\s*(?P<value>\S.*)")


def read_defaults_file(path):
    """Parse a ``spark-defaults.conf``: ``key value`` or ``key=value`` lines, ``#`` comments.

    Raises SparkConfigError naming the file and line for a line without a value.
    """
    conf = {}
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise SparkConfigError(
                f"{path}, line {number}: expected 'key value' or 'key=value', got {line!r}"
            )
        conf[match["key"]] = match["value"].strip()
    return conf


def read_admin_defaults(path):
    """The admin defaults: a JSON object of Spark settings in the file at `path`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SparkConfigError(f"cannot read the admin Spark defaults {path}: {e}") from e
    if not isinstance(data, dict):
        raise SparkConfigError(f"the admin Spark defaults {path} must be a JSON object")
    return merge(data)


def _kwargs_conf(kwargs):
    aliases = {"master": "spark.master", "app_name": "spark.app.name"}
    return {aliases.get(key, key.replace("_", ".")): value for key, value in kwargs.items()}


# -- one machine ---------------------------------------------------------------------------


def _usable_cores():
    """Cores this process may run on (the local runtime pins job runs to their profile's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _memory_limit(environ):
    """$MEM_LIMIT (sessions), else this process's address-space limit (job runs), else None."""
    if environ.get("MEM_LIMIT"):
        return environ["MEM_LIMIT"]
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    return None if limit in (resource.RLIM_INFINITY, -1) else limit


def local_conf(cpu_limit=None, memory_limit=None):
    """Settings for Spark on one machine, within the session's limits.

    Master ``local[N]`` with N = max(1, floor(cpu_limit)) (rounded down so Spark's threads do
    not outrun a throttled CPU quota; no limit → the cores this process may run on).
    ``spark.driver.memory`` =
    60 % of `memory_limit` bytes in whole MiB: the JVM adds non-heap memory on top of the heap
    and the Python process needs the rest; no limit → Spark's default. Driver on 127.0.0.1.
    """
    cores = _usable_cores() if cpu_limit is None else max(1, math.floor(float(cpu_limit)))
    conf = {
        "spark.master": f"local[{cores}]",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
    }
    if memory_limit is not None:
        mib = max(1, int(int(memory_limit) * DRIVER_MEMORY_FRACTION) // MIB)
        conf["spark.driver.memory"] = f"{mib}m"
    return conf


# -- Kubernetes ----------------------------------------------------------------------------

_SUFFIXES = {
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)")


def parse_quantity(quantity):
    """A Kubernetes quantity ("500m", "2Gi", "1.5", "1e3") as a Decimal."""
    match = _QUANTITY.fullmatch(str(quantity).strip())
    if match is None or (match[2] and match[2] not in _SUFFIXES):
        raise SparkConfigError(f"not a Kubernetes quantity: {quantity!r}")
    try:
        number = Decimal(match[1])
    except InvalidOperation as e:
        raise SparkConfigError(f"not a Kubernetes quantity: {quantity!r}") from e
    return number * _SUFFIXES.get(match[2], 1)


_SPARK_UNITS = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}


def parse_spark_memory(value, default_unit="m"):
    """A Spark memory size ("2g", "512m", "1024" in `default_unit`) in bytes."""
    match = re.fullmatch(r"(\d+)([kmgtp]?)b?", str(value).strip().lower())
    if match is None:
        raise SparkConfigError(f"not a Spark memory size: {value!r}")
    return int(match[1]) * _SPARK_UNITS[match[2] or default_unit]


def executor_resources(conf):
    """(cores, memory bytes, overhead bytes) one executor pod requests, from Spark settings."""
    cores = parse_quantity(
        conf.get("spark.kubernetes.executor.request.cores", conf.get("spark.executor.cores", 1))
    )
    memory = parse_spark_memory(conf.get("spark.executor.memory", "1g"))
    if "spark.executor.memoryOverhead" in conf:
        overhead = parse_spark_memory(conf["spark.executor.memoryOverhead"])
    else:
        factor = float(conf.get("spark.executor.memoryOverheadFactor", 0.1))
        overhead = max(384 * MIB, int(factor * memory // MIB) * MIB)
    if "spark.executor.pyspark.memory" in conf:
        overhead += parse_spark_memory(conf["spark.executor.pyspark.memory"])
    return cores, memory, overhead


def _cpu(value):
    return f"{float(value):g} CPU"


def _gib(value):
    return f"{float(value) / GIB:.3g} GiB"


def executors_within_quota(
    quota_hard, quota_used, executor_cpu, executor_memory_bytes, memory_overhead_bytes=0
):
    """How many executors one ResourceQuota still allows; None when it bounds none of them.

    Counts pods, CPU (``requests.cpu``, ``cpu``, ``limits.cpu``) and memory
    (``requests.memory``, ``memory``, ``limits.memory``; Spark sets the executor's memory
    limit to its request). Raises SparkQuotaError when not even one executor fits.
    """
    cpu = parse_quantity(executor_cpu)
    memory = Decimal(int(executor_memory_bytes) + int(memory_overhead_bytes))
    needs = {"pods": Decimal(1), "cpu": cpu, "memory": memory}
    kinds = {
        "pods": "pods",
        "count/pods": "pods",
        "cpu": "cpu",
        "requests.cpu": "cpu",
        "limits.cpu": "cpu",
        "memory": "memory",
        "requests.memory": "memory",
        "limits.memory": "memory",
    }
    left = {}
    for key, kind in kinds.items():
        if key in quota_hard:
            room = parse_quantity(quota_hard[key]) - parse_quantity(quota_used.get(key, 0))
            left[kind] = min(left.get(kind, room), room)
    counts = [int(max(room, 0) // needs[kind]) for kind, room in left.items() if needs[kind]]
    if not counts:
        return None
    fits = min(counts)
    if fits == 0:
        shown = {"pods": lambda n: f"{int(n)} pods", "cpu": _cpu, "memory": _gib}
        leaves = " and ".join(shown[k](max(v, 0)) for k, v in left.items())
        raise SparkQuotaError(
            f"the namespace quota leaves {leaves}; one executor needs {_cpu(cpu)} and "
            f"{_gib(memory)}: ask for smaller executors or stop other workloads"
        )
    return fits


def executor_pod_template(project, project_dir, claim, labels=None):
    """The executor pod template: the project's claim mounted at the session's path."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"labels": {"workbench.jupyter.org/project": project, **(labels or {})}},
        "spec": {
            "containers": [
                {
                    "name": EXECUTOR_CONTAINER,
                    "volumeMounts": [{"name": "project", "mountPath": str(project_dir)}],
                }
            ],
            "volumes": [{"name": "project", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }


def write_pod_template(template, directory=None):
    """Write `template` to a new JSON (so YAML) file and return its path."""
    fd, path = tempfile.mkstemp(prefix="workbench-spark-executor-", suffix=".json", dir=directory)
    with os.fdopen(fd, "w") as f:
        json.dump(template, f)
    return path


def _require(environ, name):
    if not environ.get(name):
        raise SparkSetupError(f"Spark on Kubernetes needs {name}, which is not set")
    return environ[name]


def kubernetes_conf(environ, namespace, admin, requested, quotas, template_path):
    """Settings for a client-mode driver in this pod with executors in `namespace`.

    `admin` holds the admin defaults (the executor image, an optional maximum executor
    count), `requested` the merged settings (executor size, the user's maximum), `quotas`
    the namespace's ResourceQuota objects. ``maxExecutors`` = the smallest of the admin's,
    the user's and what the quotas allow; unset when nothing bounds it.
    """
    if not admin.get(IMAGE):
        raise SparkSetupError(
            f"Spark on Kubernetes needs an executor image: ask your admin to set {IMAGE} "
            "in the workbench's Spark defaults"
        )
    pod = _require(environ, "HOSTNAME")
    host = _require(environ, "KUBERNETES_SERVICE_HOST")
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    conf = {
        "spark.master": f"k8s://https://{host}:{port}",
        "spark.submit.deployMode": "client",
        "spark.kubernetes.namespace": namespace,
        "spark.kubernetes.authenticate.driver.serviceAccountName": environ.get(
            "WORKBENCH_SERVICE_ACCOUNT", "workbench"
        ),
        IMAGE: admin[IMAGE],
        "spark.driver.host": _require(environ, "WORKBENCH_POD_IP"),
        "spark.driver.bindAddress": "0.0.0.0",  # noqa: S104 (executors connect to the pod IP)
        "spark.dynamicAllocation.enabled": "true",
        "spark.dynamicAllocation.shuffleTracking.enabled": "true",
        "spark.kubernetes.driver.pod.name": pod,
        f"spark.kubernetes.executor.label.{DRIVER_LABEL}": pod,
        "spark.kubernetes.executor.podTemplateFile": str(template_path),
        "spark.kubernetes.executor.podTemplateContainerName": EXECUTOR_CONTAINER,
    }
    bounds = [int(c[MAX_EXECUTORS]) for c in (admin, requested) if MAX_EXECUTORS in c]
    sizing = executor_resources(merge(admin, requested))
    for quota in quotas:
        status = quota.get("status", {})
        fits = executors_within_quota(status.get("hard", {}), status.get("used", {}), *sizing)
        if fits is not None:
            bounds.append(fits)
    if bounds:
        conf[MAX_EXECUTORS] = str(min(bounds))
    return conf


def read_resource_quotas(namespace, host, port, account_dir=SERVICE_ACCOUNT_DIR):
    """The namespace's ResourceQuota objects, read with the pod's service account."""
    token = (account_dir / "token").read_text().strip()
    request = urllib.request.Request(
        f"https://{host}:{port}/api/v1/namespaces/{namespace}/resourcequotas",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
    )
    context = ssl.create_default_context(cafile=str(account_dir / "ca.crt"))
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
            return json.load(response).get("items", [])
    except OSError as e:
        raise SparkSetupError(f"cannot read the ResourceQuotas of {namespace}: {e}") from e


# -- putting it together -------------------------------------------------------------------


def resolve_mode(mode=None, environ=None):
    """The Spark mode: `mode`, else WORKBENCH_SPARK_MODE, else "kubernetes" when in a cluster."""
    environ = os.environ if environ is None else environ
    mode = mode or environ.get("WORKBENCH_SPARK_MODE")
    if mode is None:
        return "kubernetes" if environ.get("KUBERNETES_SERVICE_HOST") else "local"
    if mode not in ("local", "kubernetes"):
        raise SparkConfigError(f"unknown Spark mode {mode!r}: use 'local' or 'kubernetes'")
    return mode


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spark_conf(conf=None, /, *, mode=None, environ=None, **kwargs):
    """The complete settings `session()` starts Spark with (reads files and, on Kubernetes,
    the namespace, its quotas, and writes the executor pod template)."""
    environ = os.environ if environ is None else environ
    admin_file = environ.get("WORKBENCH_SPARK_DEFAULTS")
    admin = read_admin_defaults(admin_file) if admin_file else {}
    project_dir = Path(environ.get("WORKBENCH_PROJECT_DIR") or os.getcwd())
    project_file = project_dir / "spark-defaults.conf"
    project = read_defaults_file(project_file) if project_file.is_file() else {}
    chosen = merge(admin, project, conf, _kwargs_conf(kwargs))
    if resolve_mode(mode, environ) == "kubernetes":
        try:
            namespace = (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip()
        except OSError as e:
            raise SparkSetupError(f"cannot read the pod's namespace: {e}") from e
        name = _require(environ, "WORKBENCH_PROJECT")
        quotas = read_resource_quotas(
            namespace, environ["KUBERNETES_SERVICE_HOST"], environ.get("KUBERNETES_SERVICE_PORT")
        )
        template = executor_pod_template(name, project_dir, f"project-{name}")
        base = kubernetes_conf(
            environ, namespace, admin, chosen, quotas, write_pod_template(template)
        )
    else:
        base = local_conf(environ.get("CPU_LIMIT"), _memory_limit(environ))
    settings = merge(base, chosen)
    if MAX_EXECUTORS in base:
        settings[MAX_EXECUTORS] = base[MAX_EXECUTORS]
    prefix = environ.get("JUPYTERHUB_SERVICE_PREFIX")
    if prefix and settings.get("spark.ui.enabled", "true") != "false":
        port = settings.setdefault("spark.ui.port", str(_free_port()))
        settings["spark.ui.proxyBase"] = ui_path(prefix, port).rstrip("/")
    return settings


def find_java(environ=None):
    """The java executable Spark will use: JAVA_HOME/bin/java, else `java` on PATH."""
    environ = os.environ if environ is None else environ
    home = environ.get("JAVA_HOME")
    if home and os.access(Path(home, "bin", "java"), os.X_OK):
        return str(Path(home, "bin", "java"))
    found = shutil.which("java", path=environ.get("PATH"))
    if found is None:
        raise SparkSetupError(
            "Spark needs Java 17 or newer: none found on PATH or in JAVA_HOME. Install it in "
            "the project's setup (e.g. `apt-get install openjdk-17-jre-headless`, or "
            "`conda install openjdk=17`) or set JAVA_HOME."
        )
    return found


def ui_path(base_url, port):
    """The path, under a session's base URL, at which its server extension proxies the Spark
    UI listening on `port` (ending in ``/``)."""
    return f"{base_url.rstrip('/')}/workbench/spark/ui/{port}/"


def registry_dir():
    """Where running Spark applications are recorded for the server extension (mode 0700)."""
    path = os.environ.get("WORKBENCH_SPARK_REGISTRY")
    return Path(path) if path else Path.home() / ".local/share/jupyter/runtime/workbench-spark"


def _register(spark, settings):
    """Record the application's UI in the registry until Spark stops; print the UI link."""
    sc = spark.sparkContext
    if not sc.uiWebUrl:
        return
    port = urlparse(sc.uiWebUrl).port
    directory = registry_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    entry = directory / f"{sc.applicationId}.json"
    record = {"port": port, "app_id": sc.applicationId, "pid": os.getpid(), "ui_url": sc.uiWebUrl}
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    os.replace(temporary, entry)

    def unregister():
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()

    atexit.register(unregister)
    stop = type(spark).stop.__get__(spark)

    def stop_and_unregister():
        stop()
        unregister()

    spark.stop = stop_and_unregister
    base = settings.get("spark.ui.proxyBase")
    print(f"Spark UI: {base}/" if base else f"Spark UI: {sc.uiWebUrl}")


#: JVM options that keep its address-space reservations small (class space, code cache,
#: metaspace, thread stacks, one GC thread): a JVM's defaults reserve gigabytes it never uses
COMPACT_JVM = (
    "-XX:CompressedClassSpaceSize=64m -XX:ReservedCodeCacheSize=64m -XX:MaxMetaspaceSize=256m "
    "-Xss512k -XX:+UseSerialGC"
)


def jvm_env(address_space_limit):
    """Environment for Spark's JVMs under an address-space limit (RLIMIT_AS, which the local
    spawner and runtime set from the profile's memory): without it a JVM cannot even start
    in 2 GiB. Nothing when the limit is infinite."""
    if address_space_limit in (resource.RLIM_INFINITY, -1):
        return {}
    return {"MALLOC_ARENA_MAX": "2", "JAVA_TOOL_OPTIONS": COMPACT_JVM}


def session(conf=None, /, *, mode=None, **kwargs):
    """An ordinary ``pyspark.sql.SparkSession`` configured for this session or job run.

    `conf` takes keys with dots; keyword arguments are described in the module docstring;
    `mode` is "local" or "kubernetes" (default: detected). Raises SparkSetupError (and its
    subclasses SparkConfigError, SparkQuotaError) with a message saying what to fix.
    """
    settings = spark_conf(conf, mode=mode, **kwargs)
    find_java()
    for name, value in jvm_env(resource.getrlimit(resource.RLIMIT_AS)[0]).items():
        os.environ.setdefault(name, value)  # the JVMs Spark starts inherit them
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    _register(spark, settings)
    return spark
