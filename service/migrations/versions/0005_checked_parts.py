"""Parts a person checked on the line (good or defective) with the score a version gave each."""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "checked_parts",
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("version", sa.Text, primary_key=True),
        sa.Column("part", sa.Text, primary_key=True),
        sa.Column("identity", sa.Text, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("good", sa.Boolean, nullable=False),
        sa.Column("checked_at", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("checked_parts")
