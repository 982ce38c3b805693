"""Spark start-up: ``workbench.spark.session()`` against a plain ``SparkSession.builder``.

Each run is a fresh Python subprocess (so a fresh JVM) that takes ``time.perf_counter()`` as
its first statement, imports what it needs, starts Spark and prints the elapsed seconds once
``getOrCreate()`` has returned (stopping Spark is not timed). The plain side gets exactly the
settings ``workbench.spark.spark_conf()`` computes in this environment, so only the SDK's own
work (reading the configuration layers, the Java check, the registry entry, the printed link)
differs. Runs alternate between the two sides; the table reports medians and the overhead,
against the issue's 5 % target. Run from the repository root:

    python benchmarks/spark_startup.py --runs 5
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

WORKBENCH = """
import time
t0 = time.perf_counter()
import workbench.spark
spark = workbench.spark.session()
print("ELAPSED", time.perf_counter() - t0)
spark.stop()
"""

PLAIN = """
import time
t0 = time.perf_counter()
import json, sys
from pyspark.sql import SparkSession
builder = SparkSession.builder
for key, value in json.loads(sys.argv[1]).items():
    builder = builder.config(key, value)
spark = builder.getOrCreate()
print("ELAPSED", time.perf_counter() - t0)
spark.stop()
"""


def run(code, *args, env):
    """Seconds to a started SparkSession in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True
    ).stdout
    return float(next(line for line in out.splitlines() if line.startswith("ELAPSED")).split()[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each side (default 5)")
    parser.add_argument("--cpu-limit", default="2", help="CPU_LIMIT for both sides")
    parser.add_argument("--mem-limit", default=str(2 * 1024**3), help="MEM_LIMIT in bytes")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as project:
        env = {
            **os.environ,
            "CPU_LIMIT": args.cpu_limit,
            "MEM_LIMIT": args.mem_limit,
            "WORKBENCH_PROJECT_DIR": project,
            "WORKBENCH_SPARK_REGISTRY": os.path.join(project, "registry"),
        }
        with open(os.path.join(project, "spark-defaults.conf"), "w") as f:
            f.write("spark.sql.shuffle.partitions 4\nspark.ui.showConsoleProgress false\n")
        from workbench import spark as wspark

        conf = json.dumps(wspark.spark_conf(environ=env))
        times = {"workbench.spark.session()": [], "SparkSession.builder": []}
        for _ in range(args.runs):
            times["workbench.spark.session()"].append(run(WORKBENCH, env=env))
            times["SparkSession.builder"].append(run(PLAIN, conf, env=env))

    medians = {name: statistics.median(values) for name, values in times.items()}
    plain = medians["SparkSession.builder"]
    print(f"Spark start-up, {args.runs} runs each, CPU_LIMIT={args.cpu_limit}")
    print(f"{'':28} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, values in times.items():
        print(f"{name:28} {medians[name]:9.3f} {min(values):7.3f} {max(values):7.3f}")
    overhead = medians["workbench.spark.session()"] / plain - 1
    verdict = "meets" if overhead <= 0.05 else "misses"
    print(f"overhead {overhead:+.1%} ({verdict} the 5 % target)")


if __name__ == "__main__":
    main()
