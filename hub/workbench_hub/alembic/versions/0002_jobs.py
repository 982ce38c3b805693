"""jobs and job runs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 00:00:00+00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "project_id",
            sa.Integer,
            sa.ForeignKey("projects.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("target", sa.String(1024), nullable=False),
        sa.Column("arguments", sa.JSON, nullable=False),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("env", sa.JSON, nullable=False),
        sa.Column("profile", sa.String(63), nullable=False),
        sa.Column("schedule", sa.String(16), nullable=False),
        sa.Column("cron", sa.String(255)),
        sa.Column("timezone", sa.String(64)),
        sa.Column(
            "parent_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="RESTRICT"), index=True
        ),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("timeout_seconds", sa.Integer),
        sa.Column("retry_max", sa.Integer, nullable=False),
        sa.Column("retry_delay_seconds", sa.Integer, nullable=False),
        sa.Column("retry_on", sa.JSON, nullable=False),
        sa.Column("concurrency", sa.String(16), nullable=False),
        sa.Column("notify", sa.JSON, nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_tick", sa.DateTime(timezone=True), index=True),
        sa.Column("next_run_number", sa.Integer, nullable=False),
        sa.UniqueConstraint("project_id", "name"),
    )
    op.create_table(
        "job_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "job_id",
            sa.Integer,
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column(
            "project_id",
            sa.Integer,
            sa.ForeignKey("projects.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("triggered_by", sa.String(255)),
        sa.Column("parent_run_id", sa.Integer, sa.ForeignKey("job_runs.id", ondelete="SET NULL")),
        sa.Column("scheduled_for", sa.DateTime(timezone=True)),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True)),
        sa.Column("exit_code", sa.Integer),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("queue_reason", sa.Text, nullable=False),
        sa.Column("workload", sa.String(63)),
        sa.Column("code_hash", sa.String(80)),
        sa.Column("rerun_of_id", sa.Integer, sa.ForeignKey("job_runs.id", ondelete="SET NULL")),
        sa.Column("output_dir", sa.String(1024)),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("job_id", "number"),
        sa.UniqueConstraint("job_id", "scheduled_for"),
    )


def downgrade() -> None:
    op.drop_table("job_runs")
    op.drop_table("jobs")
