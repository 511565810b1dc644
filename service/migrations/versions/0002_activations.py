"""The activation log: every change of a model's active version, with what was before and why."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "activations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("previous", sa.Text),
        sa.Column("cause", sa.String(64), nullable=False),
        sa.Column("at", sa.Text, nullable=False),
    )
    op.create_index("activations_model", "activations", ["model", "id"])


def downgrade() -> None:
    op.drop_index("activations_model", table_name="activations")
    op.drop_table("activations")
