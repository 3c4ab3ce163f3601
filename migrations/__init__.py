"""Alembic migrations for the pgqueue schema (shipped as ``pgqueue.migrations``)."""
