"""Run the control plane service: ``python -m workbench_hub``."""

from workbench_hub.app import WorkbenchService

if __name__ == "__main__":
    WorkbenchService.launch_instance()
