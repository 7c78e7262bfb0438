"""Moving the test database to a given migration state and back, for the tests of migrations that move data."""
from django.db import connection
from django.db.migrations.executor import MigrationExecutor


def migrate_to(targets):
    """Migrate to ``targets`` (``[(app, name)]``); returns the models of that state, as the migrations see them."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def latest_migrations():
    """Every app's latest migration: where a test that moved back must leave the database."""
    return MigrationExecutor(connection).loader.graph.leaf_nodes()
