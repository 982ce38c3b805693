"""Kubernetes support shared by the spawner and the control plane (issue 5).

``namespace_objects`` and ``workload_objects`` build manifests (pure functions); ``api`` is a
small async client of plain-dict objects; ``namespaces`` keeps each user's namespace in shape.
"""
