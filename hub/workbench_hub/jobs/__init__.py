"""Jobs: scheduled, dependent and retried runs of a project's notebooks and scripts.

The engine (:mod:`workbench_hub.jobs.engine`) keeps its state in the database and runs
workloads through the control plane's runtime. See ``docs/jobs.md``.
"""

#: The states a run ends in (it starts ``queued``, then ``running``).
END_STATES = ("succeeded", "failed", "timed_out", "stopped")
