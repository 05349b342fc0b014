"""Nightly archive cataloguing: schema, inventory, Ray Data pipeline and queries.

Public entry points: :func:`run_catalogue` / :class:`CatalogueConfig` (pipeline),
:func:`connect` (DuckDB over a catalogue), :data:`SCHEMA` / :data:`COLUMNS` (the contract).
"""
from .schema import COLUMNS, SCHEMA, CatalogueFlag, flag_names

__all__ = ["COLUMNS", "SCHEMA", "CatalogueFlag", "flag_names", "run_catalogue", "CatalogueConfig", "connect"]


def __getattr__(name):  # lazy: importing the schema must not import Ray or DuckDB
    if name in ("run_catalogue", "CatalogueConfig", "RunSummary", "CatalogueError"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "connect":
        from .query import connect

        return connect
    raise AttributeError(name)
