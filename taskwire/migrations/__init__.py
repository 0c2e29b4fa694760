"""Alembic migrations. A package so that setuptools ships env.py with the wheel."""
