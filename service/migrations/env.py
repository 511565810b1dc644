"""Alembic's entry point: run the migrations on the connection service/database.py hands over."""

from alembic import context

from patchshift.service.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
