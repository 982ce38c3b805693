"""models, builds, deployments, access keys and model metrics

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 04:30:00+00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_BIG_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _parent(name: str, table: str, ondelete: str = "CASCADE", index: bool = True) -> sa.Column:
    return sa.Column(
        name,
        sa.Integer,
        sa.ForeignKey(f"{table}.id", ondelete=ondelete),
        nullable=False,
        index=index,
    )


def _time(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer, primary_key=True),
        _parent("project_id", "projects"),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("crn", sa.String(128), nullable=False, unique=True),
        sa.Column("file", sa.String(1024), nullable=False),
        sa.Column("function", sa.String(255), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("profile", sa.String(63), nullable=False),
        sa.Column("replicas", sa.Integer, nullable=False),
        sa.Column("env", sa.JSON, nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        _time("created", nullable=False),
        _time("updated", nullable=False),
        sa.Column("next_build_number", sa.Integer, nullable=False),
        sa.Column("next_deployment_number", sa.Integer, nullable=False),
        sa.UniqueConstraint("project_id", "name"),
    )
    op.create_table(
        "model_builds",
        sa.Column("id", sa.Integer, primary_key=True),
        _parent("model_id", "models"),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("crn", sa.String(128), nullable=False, unique=True),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("file", sa.String(1024), nullable=False),
        sa.Column("function", sa.String(255), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("path", sa.String(1024)),
        sa.Column("workload", sa.String(63)),
        sa.Column("created_by", sa.String(255), nullable=False),
        _time("created", nullable=False),
        _time("started_at"),
        _time("finished_at"),
        sa.UniqueConstraint("model_id", "number"),
    )
    op.create_table(
        "model_deployments",
        sa.Column("id", sa.Integer, primary_key=True),
        _parent("model_id", "models"),
        _parent("build_id", "model_builds"),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("crn", sa.String(128), nullable=False, unique=True),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("replicas", sa.Integer, nullable=False),
        sa.Column("profile", sa.String(63), nullable=False),
        sa.Column("env", sa.JSON, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        _time("created", nullable=False),
        _time("started_at"),
        _time("stopped_at"),
        sa.UniqueConstraint("model_id", "number"),
    )
    op.create_table(
        "model_access_keys",
        sa.Column("id", sa.Integer, primary_key=True),
        _parent("model_id", "models"),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        _time("created", nullable=False),
        _time("revoked_at"),
    )
    op.create_table(
        "model_metrics",
        sa.Column("id", _BIG_KEY, primary_key=True),
        # no foreign key (a per-row check halves COPY ingest): the trigger below deletes a
        # deployment's metrics with it; see orm.ModelMetric
        sa.Column("deployment_id", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("prediction_uuid", sa.String(36)),
        sa.Column("start_ms", sa.BigInteger, nullable=False),
        sa.Column("end_ms", sa.BigInteger, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
    )
    op.create_index(
        "ix_model_metrics_deployment_start", "model_metrics", ["deployment_id", "start_ms"]
    )
    op.create_index(
        "ix_model_metrics_prediction_uuid",
        "model_metrics",
        ["prediction_uuid"],
        postgresql_using="hash",
    )
    _create_metrics_cleanup()


def _create_metrics_cleanup() -> None:
    """Delete a deployment's model metrics when the deployment row is deleted."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION model_deployments_drop_metrics() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                DELETE FROM model_metrics WHERE deployment_id = OLD.id;
                RETURN OLD;
            END
            $$
            """
        )
        op.execute(
            "CREATE TRIGGER model_deployments_drop_metrics AFTER DELETE ON model_deployments"
            " FOR EACH ROW EXECUTE FUNCTION model_deployments_drop_metrics()"
        )
    else:
        op.execute(
            "CREATE TRIGGER model_deployments_drop_metrics AFTER DELETE ON model_deployments"
            " BEGIN DELETE FROM model_metrics WHERE deployment_id = OLD.id; END"
        )


def downgrade() -> None:
    for table in ("model_metrics", "model_access_keys", "model_deployments", "model_builds"):
        op.drop_table(table)  # a table's triggers go with it
    op.drop_table("models")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS model_deployments_drop_metrics()")
