"""The active version of every model, shared by every replica (the activation log says how it got
there)."""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "active_versions",
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("changed", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("active_versions")
