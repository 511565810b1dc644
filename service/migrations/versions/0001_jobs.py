"""The job records, as the service kept them before migrations existed."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("progress", sa.Float, nullable=False, server_default="0"),
        sa.Column("stage", sa.Text),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("created", sa.Text, nullable=False),
        sa.Column("started", sa.Text),
        sa.Column("finished", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("result_version", sa.Text),
        sa.Column("result", sa.Text),
    )
    op.create_index("jobs_model", "jobs", ["model", "status"])


def downgrade() -> None:
    op.drop_index("jobs_model", table_name="jobs")
    op.drop_table("jobs")
