"""A control plane reduced to its job engine, for the SIGKILL test (run as a subprocess).

    python -m tests.jobs.engine_process <db_url> <runtime_state_dir> <project_root>
        <snapshot_dir> <clock_file>

Builds the engine the way WorkbenchService does (Database, LocalProcessRuntime, JobEngine),
reads the current time from <clock_file> (ISO 8601, written by the test), starts the engine and
runs until killed. Prints "ready" once the engine has started.
"""

import asyncio
import logging
import sys
from datetime import datetime
from pathlib import Path

from workbench_hub.db import Database
from workbench_hub.jobs.engine import JobEngine
from workbench_hub.runtime.local import LocalProcessRuntime


async def main(db_url, state_dir, project_root, snapshot_dir, clock_file) -> None:
    engine = JobEngine(
        db=Database(db_url),
        runtime=LocalProcessRuntime(state_dir=state_dir, poll_interval=0.05),
        project_root=project_root,
        snapshot_dir=snapshot_dir,
        clock=lambda: datetime.fromisoformat(Path(clock_file).read_text().strip()),
        poll_interval=0.1,
        log=logging.getLogger("engine"),
    )
    await engine.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(main(*sys.argv[1:6]))
