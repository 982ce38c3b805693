"""Rows of models, builds and deployments for tests and benchmarks that seed a database directly."""

from workbench_hub.models import new_crn, secret_hash
from workbench_hub.orm import Model, ModelBuild, ModelDeployment


def model_row(project_id: int, name: str = "iris", user: str = "alice", **fields) -> Model:
    values = {"file": "model.py", "function": "predict", "profile": "small", **fields}
    return Model(project_id=project_id, name=name, crn=new_crn("model"), created_by=user, **values)


def build_row(model: Model, number: int = 1, user: str = "alice", **fields) -> ModelBuild:
    """A build of `model` (its file and function), succeeded unless `state` is given."""
    values = {"state": "succeeded", "file": model.file, "function": model.function, **fields}
    return ModelBuild(
        model_id=model.id, number=number, crn=new_crn("build"), created_by=user, **values
    )


def deployment_row(
    model_id: int, build_id: int, number: int = 1, token: str = "token", user: str = "alice"
) -> ModelDeployment:
    """A running one-replica deployment whose replicas authenticate with `token`."""
    return ModelDeployment(
        model_id=model_id,
        build_id=build_id,
        number=number,
        crn=new_crn("deployment"),
        state="running",
        replicas=1,
        profile="small",
        token_hash=secret_hash(token),
        created_by=user,
    )
