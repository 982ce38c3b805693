"""Spawners of Jupyter Workbench sessions: one JupyterHub named server per project."""

from .local import WorkbenchLocalSpawner

__all__ = ["WorkbenchLocalSpawner"]
