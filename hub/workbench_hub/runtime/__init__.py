"""The runtime layer: one interface (``base``) to run workloads, with a local implementation.

Kept import-free: the supervisor shim is started as ``python -m workbench_hub.runtime.shim``.
"""
