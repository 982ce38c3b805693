"""Live progress of the Spark jobs a notebook cell starts.

    import workbench.spark_progress
    workbench.spark_progress.enable()   # the active SparkSession, or enable(spark)

While a cell runs, a thread polls the SparkContext's status tracker every 0.5 s and shows
one progress bar per Spark job the cell started; when the cell ends it shows the final state.
Needs ipywidgets. A cell's jobs are those that run while it runs, plus those without a job
group that finished between two polls.
"""

import html
import os
import threading

from .errors import WorkbenchError
from .spark import ui_path

POLL_SECONDS = 0.5
TASK_KEYS = ("numTasks", "numCompletedTasks", "numActiveTasks", "numFailedTasks")

_hooks = None  # (shell, pre_run_cell, post_run_cell) while enabled
_progress = None  # the running cell's _CellProgress


def job_progress(tracker, job_ids=None):
    """The state of `job_ids` (default: the active jobs) as read from `tracker`.

    Each job is `{"jobId", "status", "stages": [{"stageId", "name", <task counts>}],
    <task counts summed over its stages>}`, sorted by job id; unknown jobs are left out.
    """
    jobs = []
    for job_id in sorted(tracker.getActiveJobsIds() if job_ids is None else job_ids):
        info = tracker.getJobInfo(job_id)
        if info is None:
            continue
        stages = []
        for stage_id in sorted(info.stageIds):
            stage = tracker.getStageInfo(stage_id)
            if stage is not None:
                stages.append(
                    {
                        "stageId": stage.stageId,
                        "name": stage.name,
                        **{key: getattr(stage, key) for key in TASK_KEYS},
                    }
                )
        jobs.append(
            {
                "jobId": job_id,
                "status": info.status,
                "stages": stages,
                **{key: sum(stage[key] for stage in stages) for key in TASK_KEYS},
            }
        )
    return jobs


def _ui_path(sc):
    port = (sc.uiWebUrl or "").rsplit(":", 1)[-1]
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
    return ui_path(prefix, port) if port.isdigit() else None


class _CellProgress:
    """The widgets and the polling thread of the cell that is running."""

    def __init__(self, sc, widgets, display):
        self.sc = sc
        self.widgets = widgets
        self.ui = _ui_path(sc)
        self.box = widgets.VBox()
        self.bars = {}
        self.seen = set()
        tracker = sc.statusTracker()
        self.first_job = 1 + max([-1, *tracker.getJobIdsForGroup(), *tracker.getActiveJobsIds()])
        self.stopped = threading.Event()
        display(self.box)
        self.thread = threading.Thread(target=self._poll, name="spark-progress", daemon=True)
        self.thread.start()

    def _poll(self):
        while not self.stopped.wait(POLL_SECONDS):
            tracker = self.sc.statusTracker()
            self.seen.update(j for j in tracker.getActiveJobsIds() if j >= self.first_job)
            self.render(job_progress(tracker, self.seen))

    def finish(self):
        self.stopped.set()
        self.thread.join()
        tracker = self.sc.statusTracker()
        ungrouped = {j for j in tracker.getJobIdsForGroup() if j >= self.first_job}
        jobs = job_progress(tracker, self.seen | ungrouped)
        if jobs:
            self.render(jobs)
        else:
            self.box.close()

    def render(self, jobs):
        for job in jobs:
            if job["jobId"] not in self.bars:
                bar = self.widgets.IntProgress(min=0, description=f"Job {job['jobId']}")
                label = self.widgets.HTML()
                self.bars[job["jobId"]] = (bar, label)
                self.box.children = (*self.box.children, self.widgets.HBox([bar, label]))
            bar, label = self.bars[job["jobId"]]
            bar.max = max(job["numTasks"], 1)
            bar.value = job["numCompletedTasks"]
            bar.bar_style = {"SUCCEEDED": "success", "FAILED": "danger"}.get(job["status"], "")
            label.value = _label(job, self.ui)


def _label(job, ui):
    text = (
        f"{job['status'].lower()}: {len(job['stages'])} stage(s), "
        f"{job['numCompletedTasks']}/{job['numTasks']} tasks done, "
        f"{job['numActiveTasks']} running, {job['numFailedTasks']} failed"
    )
    if ui:
        text += f' — <a href="{html.escape(ui)}jobs/job/?id={job["jobId"]}" target="_blank">UI</a>'
    return text


def enable(spark=None):
    """Show the progress of the Spark jobs of every following cell of this notebook.

    `spark` is a SparkSession or SparkContext; default the active SparkSession.
    """
    try:
        import ipywidgets
        from IPython import get_ipython
        from IPython.display import display
    except ImportError as e:
        raise WorkbenchError(
            None, "Spark progress needs ipywidgets: run `pip install ipywidgets`"
        ) from e
    shell = get_ipython()
    if shell is None:
        raise WorkbenchError(None, "Spark progress works only in a notebook or IPython")
    if spark is None:
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()
        if spark is None:
            raise WorkbenchError(None, "no active SparkSession: call workbench.spark.session()")
    global _hooks
    sc = getattr(spark, "sparkContext", spark)
    disable()

    def pre_run_cell(_info):
        global _progress
        _progress = _CellProgress(sc, ipywidgets, display)

    def post_run_cell(_result):
        global _progress
        if _progress is not None:
            _progress.finish()
            _progress = None

    shell.events.register("pre_run_cell", pre_run_cell)
    shell.events.register("post_run_cell", post_run_cell)
    _hooks = (shell, pre_run_cell, post_run_cell)


def disable():
    """Stop showing Spark progress (does nothing when it is not enabled)."""
    global _hooks
    if _hooks is None:
        return
    shell, pre_run_cell, post_run_cell = _hooks
    shell.events.unregister("pre_run_cell", pre_run_cell)
    shell.events.unregister("post_run_cell", post_run_cell)
    _hooks = None
