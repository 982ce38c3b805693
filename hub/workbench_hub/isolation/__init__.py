"""Walls between the users of one machine: each workload as its user's unix account, inside a
sandbox that shows it only its project, its home and the software (docs/isolation.md).

Kept import-free (the runtime's supervisor imports ``sandbox``). :class:`config.Isolation` is
shared by the local spawner (sessions) and the local runtime (job runs,
model builds, replicas); both build a :class:`~workbench_hub.isolation.sandbox.SandboxPolicy`
with it and enter it in the workload's process just before it runs.
"""
