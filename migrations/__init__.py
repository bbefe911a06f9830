"""Alembic migrations: the only way the schema changes. ``core.db.migrate`` finds this
folder through the package, so upgrades work from any working directory."""
