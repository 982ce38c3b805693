"""REST handlers of the control plane; each module exports `handlers` (pattern, class) pairs."""

from workbench_hub.handlers import (
    access_keys,
    audit,
    collaborators,
    deployments,
    jobs,
    model_builds,
    model_metrics,
    models,
    openapi,
    profiles,
    projects,
    prometheus,
    replica,
    runs,
    sessions,
    spawn_options,
    templates,
)

API_MODULES = (
    projects,
    collaborators,
    sessions,
    jobs,
    runs,
    models,
    model_builds,
    deployments,
    access_keys,
    replica,
    model_metrics,
    prometheus,
    templates,
    profiles,
    spawn_options,
    audit,
    openapi,
)


def api_handlers(prefix: str) -> list[tuple[str, type]]:
    """Every API route, as tornado URL specs under `prefix` (ending in ``api/v1/``)."""
    return [(prefix + pattern, cls) for module in API_MODULES for pattern, cls in module.handlers]
