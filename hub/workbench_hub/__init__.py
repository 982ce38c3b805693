"""Jupyter Workbench control plane: the JupyterHub-managed service `workbench`."""

__version__ = "0.1.0"
