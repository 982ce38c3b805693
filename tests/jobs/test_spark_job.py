"""A job run that calls `workbench.spark.session()`: a real PySpark aggregation in local mode,
run by the real engine through the local runtime, with the project's spark-defaults.conf."""

import pytest

from tests.jobs.test_engine import output_log

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

SCRIPT = """\
import resource
import workbench.spark

spark = workbench.spark.session(**{"spark.sql.shuffle.partitions": "3"})
rows = spark.read.option("header", True).option("inferSchema", True).csv("sales.csv")
totals = {r["region"]: r["total"] for r in rows.groupBy("region").sum("amount")
          .withColumnRenamed("sum(amount)", "total").collect()}
print("totals", sorted(totals.items()))
print("master", spark.sparkContext.master)
print("app", spark.conf.get("spark.app.name"))
print("partitions", spark.conf.get("spark.sql.shuffle.partitions"))
spark.stop()
"""

SALES = "region,amount\nnorth,10\nsouth,5\nnorth,7\neast,1\nsouth,2\n"


async def test_a_job_run_aggregates_with_pyspark(env):
    project = await env.project(
        files={
            "aggregate.py": SCRIPT,
            "sales.csv": SALES,
            "spark-defaults.conf": "spark.app.name  sales-report\nspark.sql.shuffle.partitions 7\n",
        }
    )
    job = await env.job(project, "aggregate", "aggregate.py", timeout_seconds=300)
    run = await env.engine.trigger(job, user="alice")
    run = await env.ended(run.id, timeout=240)
    log = output_log(run)
    assert run.state == "succeeded", log
    assert "totals [('east', 1), ('north', 17), ('south', 7)]" in log
    assert "app sales-report" in log, "the project's spark-defaults.conf applies"
    assert "partitions 3" in log, "the call's arguments win over the project's defaults"
    assert "master local[" in log


LIMITED = """\
import resource
import workbench.spark

spark = workbench.spark.session()
print("limit", resource.getrlimit(resource.RLIMIT_AS)[0])
print("master", spark.sparkContext.master)
print("driver memory", spark.conf.get("spark.driver.memory"))
print("sum", spark.range(100000).selectExpr("sum(id) as s").collect()[0]["s"])
spark.stop()
"""


async def test_spark_fits_the_profile_of_a_run(make_env):
    """Under the profile's address-space limit (2 GiB) and one pinned core, Spark starts with
    local[1] and a driver heap within the limit (a JVM with default settings cannot start)."""
    profile = {"name": "small", "cpu": 1, "memory": 2 * 1024**3, "gpu": 0, "groups": []}
    env = make_env(resource_profiles=[profile])
    project = await env.project(files={"limited.py": LIMITED})
    job = await env.job(project, "limited", "limited.py", timeout_seconds=300)
    run = await env.engine.trigger(job, user="alice")
    run = await env.ended(run.id, timeout=240)
    log = output_log(run)
    assert run.state == "succeeded", log
    assert f"limit {2 * 1024**3}" in log
    assert "master local[1]" in log
    assert "driver memory 1228m" in log  # 60 % of 2 GiB
    assert "sum 4999950000" in log
