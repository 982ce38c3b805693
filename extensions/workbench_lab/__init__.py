"""The Jupyter Workbench extension for Jupyter Server and JupyterLab.

Inside a workbench session it serves the `/workbench/` API used by the JupyterLab side panel
and makes the project's files read-only for viewers and operators.
"""

from .app import WorkbenchLabApp

__all__ = ["WorkbenchLabApp"]


def _jupyter_server_extension_points():
    return [{"module": "workbench_lab", "app": WorkbenchLabApp}]


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "@jupyter-workbench/lab"}]
