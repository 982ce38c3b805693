"""Database tables. Every schema change goes through an Alembic migration in alembic/versions."""

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend (SQLite drops the offset when storing)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("refusing to store a naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    owner_kind: Mapped[str] = mapped_column(String(16), nullable=False)
    owner_name: Mapped[str] = mapped_column(String(255), nullable=False)
    visibility: Mapped[str] = mapped_column(String(16), nullable=False, default="private")
    created: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    collaborators: Mapped[list["Collaborator"]] = relationship(
        back_populates="project", cascade="all, delete-orphan", passive_deletes=True
    )


class Collaborator(Base):
    __tablename__ = "collaborators"
    __table_args__ = (UniqueConstraint("project_id", "user_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=False, index=True
    )
    user_name: Mapped[str] = mapped_column(String(255), nullable=False, index=True)
    role: Mapped[str] = mapped_column(String(16), nullable=False)

    project: Mapped[Project] = relationship(back_populates="collaborators")


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(255), nullable=False, index=True)
    action: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    object_type: Mapped[str] = mapped_column(String(64), nullable=False)
    object_id: Mapped[str] = mapped_column(String(255), nullable=False)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    detail: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)


class Job(Base):
    """A runnable file of a project with its schedule, retries and notifications."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    #: path of the .py or .ipynb file, relative to the project directory
    target: Mapped[str] = mapped_column(String(1024), nullable=False)
    arguments: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    parameters: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    env: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    profile: Mapped[str] = mapped_column(String(63), nullable=False)
    #: "manual" | "cron" | "dependent"
    schedule: Mapped[str] = mapped_column(String(16), nullable=False, default="manual")
    cron: Mapped[str | None] = mapped_column(String(255))
    timezone: Mapped[str | None] = mapped_column(String(64))
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="RESTRICT"), index=True
    )
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    timeout_seconds: Mapped[int | None] = mapped_column(Integer)
    retry_max: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    retry_delay_seconds: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    #: end states that are retried, e.g. ["failed", "timed_out"]
    retry_on: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    #: "allow" | "forbid" | "replace"
    concurrency: Mapped[str] = mapped_column(String(16), nullable=False, default="forbid")
    #: {"recipients": [...], "on": ["failed", ...], "attach_notebook": bool, "attach_log": bool}
    notify: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    created_by: Mapped[str] = mapped_column(String(255), nullable=False)
    created: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    #: the next cron instant not yet handled (None unless schedule == "cron" and active)
    next_tick: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    #: the number the next run of this job gets
    next_run_number: Mapped[int] = mapped_column(Integer, nullable=False, default=1)

    project: Mapped[Project] = relationship()
    parent: Mapped["Job | None"] = relationship(remote_side=[id])


class JobRun(Base):
    """One run of a job: queued → running → succeeded | failed | timed_out | stopped."""

    __tablename__ = "job_runs"
    __table_args__ = (
        UniqueConstraint("job_id", "number"),
        # a cron tick creates at most one run, even across control plane crashes
        UniqueConstraint("job_id", "scheduled_for"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=False, index=True
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="queued", index=True)
    #: "user" | "schedule" | "parent" | "retry" | "rerun"
    trigger: Mapped[str] = mapped_column(String(16), nullable=False)
    triggered_by: Mapped[str | None] = mapped_column(String(255))
    parent_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("job_runs.id", ondelete="SET NULL")
    )
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    #: a retry or rerun does not start before this time
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str] = mapped_column(Text, nullable=False, default="")
    #: why a queued run waits (quota), shown to users
    queue_reason: Mapped[str] = mapped_column(Text, nullable=False, default="")
    workload: Mapped[str | None] = mapped_column(String(63))
    code_hash: Mapped[str | None] = mapped_column(String(80))
    #: run this code snapshot instead of the live project files (reruns)
    rerun_of_id: Mapped[int | None] = mapped_column(ForeignKey("job_runs.id", ondelete="SET NULL"))
    output_dir: Mapped[str | None] = mapped_column(String(1024))
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    job: Mapped[Job] = relationship()


#: a 64-bit key that autoincrements on every backend (SQLite only does so for INTEGER)
BigKey = BigInteger().with_variant(Integer, "sqlite")


class Model(Base):
    """A function of a project file served over HTTP (docs/models.md)."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    crn: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    #: path of the .py file, relative to the project directory
    file: Mapped[str] = mapped_column(String(1024), nullable=False)
    function: Mapped[str] = mapped_column(String(255), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    profile: Mapped[str] = mapped_column(String(63), nullable=False)
    replicas: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    env: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    created_by: Mapped[str] = mapped_column(String(255), nullable=False)
    created: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    next_build_number: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    next_deployment_number: Mapped[int] = mapped_column(Integer, nullable=False, default=1)

    project: Mapped[Project] = relationship()


class ModelBuild(Base):
    """An immutable snapshot of the project's files: queued → building → succeeded | failed."""

    __tablename__ = "model_builds"
    __table_args__ = (UniqueConstraint("model_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), nullable=False, index=True
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    crn: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="queued", index=True)
    #: the model's file and function when the build was made
    file: Mapped[str] = mapped_column(String(1024), nullable=False)
    function: Mapped[str] = mapped_column(String(255), nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False, default="")
    #: directory holding the build (src/ and, with an install step, env/)
    path: Mapped[str | None] = mapped_column(String(1024))
    workload: Mapped[str | None] = mapped_column(String(63))
    created_by: Mapped[str] = mapped_column(String(255), nullable=False)
    created: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    model: Mapped[Model] = relationship()


class ModelDeployment(Base):
    """One build served by N replicas: deploying → running → superseded | stopped | failed.

    ``crn`` stays the same across scaling and restarts; a redeploy makes a new deployment.
    """

    __tablename__ = "model_deployments"
    __table_args__ = (UniqueConstraint("model_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), nullable=False, index=True
    )
    build_id: Mapped[int] = mapped_column(
        ForeignKey("model_builds.id", ondelete="CASCADE"), nullable=False, index=True
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    crn: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="deploying", index=True)
    replicas: Mapped[int] = mapped_column(Integer, nullable=False)
    profile: Mapped[str] = mapped_column(String(63), nullable=False)
    env: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    #: bumped by a restart: replicas of an older generation are replaced, rolling
    generation: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    message: Mapped[str] = mapped_column(Text, nullable=False, default="")
    #: SHA-256 of the secret the replicas use to call the control plane
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    created_by: Mapped[str] = mapped_column(String(255), nullable=False)
    created: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    model: Mapped[Model] = relationship()
    build: Mapped[ModelBuild] = relationship()


class ModelAccessKey(Base):
    """A key that callers of a model present; only its SHA-256 is stored."""

    __tablename__ = "model_access_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), nullable=False, index=True
    )
    #: the first characters of the key, shown to tell keys apart
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_by: Mapped[str] = mapped_column(String(255), nullable=False)
    created: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ModelMetric(Base):
    """One metrics record of a deployment (docs/model-metrics.md).

    ``kind``: ``prediction`` (tracked while serving), ``delayed`` (merged into the prediction
    with the same uuid when read), ``aggregate`` (a time window) or ``rollup`` (old
    predictions summarised).

    ``deployment_id`` has no foreign key on purpose: PostgreSQL checks one row by row (a
    lookup and a row lock in model_deployments per inserted row), which halved the COPY rate
    of the replicas' ingest. Instead migration 0003 installs a trigger deleting a deployment's
    metrics with the deployment (also when a model or project deletion cascades to it), and
    the metrics store's maintenance pass removes rows of deployments that no longer exist.
    """

    __tablename__ = "model_metrics"
    __table_args__ = (
        Index("ix_model_metrics_deployment_start", "deployment_id", "start_ms"),
        # equality lookups only (delayed metrics by uuid): on PostgreSQL a hash index is
        # cheaper to insert into than a B-tree and compares no collation (SQLite: a B-tree)
        Index("ix_model_metrics_prediction_uuid", "prediction_uuid", postgresql_using="hash"),
    )

    id: Mapped[int] = mapped_column(BigKey, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(Integer, nullable=False)
    kind: Mapped[str] = mapped_column(String(12), nullable=False)
    prediction_uuid: Mapped[str | None] = mapped_column(String(36))
    start_ms: Mapped[int] = mapped_column(BigInteger, nullable=False)
    end_ms: Mapped[int] = mapped_column(BigInteger, nullable=False)
    metrics: Mapped[dict] = mapped_column(JSON, nullable=False)
