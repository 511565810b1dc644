"""Jobs claimed by a pool of workers: each record counts its attempts (a fencing token against a
worker that lost its lease) and the runs whose worker went silent, and names its entry in
procrastinate's queue; on PostgreSQL the queue's
own schema (procrastinate 3.10) is created here, so one `migrate` brings up everything."""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("stalls", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("queue_id", sa.BigInteger))
    bind = op.get_bind()
    if bind.dialect.name != "postgresql" or sa.inspect(bind).has_table("procrastinate_jobs"):
        return
    from procrastinate.schema import SchemaManager

    # the schema is one script with functions and triggers: sent as it is, with no parameters
    bind.connection.driver_connection.execute(SchemaManager.get_schema())


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("queue_id")
        batch.drop_column("stalls")
        batch.drop_column("attempts")
