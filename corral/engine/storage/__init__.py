"""Durable storage of documents, indexes and commits: SQLite (default) or PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from .base import CommitListener, Store, StoreConn, WriteJob, WriteOutcome


def open_store(database_url: str | None, sqlite_path: Path, **options: object) -> Store:
    """A store for a `postgresql://` URL, else the SQLite file at `sqlite_path`."""
    if database_url and database_url.startswith(("postgres://", "postgresql://")):
        from .postgres import PostgresStore

        return PostgresStore(database_url, **options)  # type: ignore[arg-type]
    if database_url and not database_url.startswith("sqlite:"):
        from ..errors import ConfigError

        raise ConfigError(f"database URL {database_url!r} is neither postgresql://… nor sqlite:///path")
    from .sqlite import SqliteStore

    path = Path(database_url[len("sqlite://"):].lstrip("/") and "/" + database_url[len("sqlite://"):].lstrip("/")) if database_url else sqlite_path
    return SqliteStore(path, **options)  # type: ignore[arg-type]


__all__ = ["CommitListener", "Store", "StoreConn", "WriteJob", "WriteOutcome", "open_store"]
