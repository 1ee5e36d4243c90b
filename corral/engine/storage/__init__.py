"""Durable storage of documents, indexes and commits: SQLite (default) or PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from .base import CommitListener, Store, StoreConn, WriteJob, WriteOutcome


def open_store(database_url: str | None, sqlite_path: Path, **options: object) -> Store:
    """A store for a `postgresql://` URL, else the SQLite file at `sqlite_path`."""
    if is_postgres(database_url):
        from .postgres import PostgresStore

        return PostgresStore(database_url, **options)  # type: ignore[arg-type]
    if database_url and not database_url.startswith("sqlite:"):
        from ..errors import ConfigError

        raise ConfigError(f"database URL {database_url!r} is neither postgresql://… nor sqlite:///path")
    from .sqlite import SqliteStore

    return SqliteStore(sqlite_file(database_url, sqlite_path), **options)  # type: ignore[arg-type]


def sqlite_file(database_url: str | None, default: Path) -> Path:
    """`sqlite:///abs/path` → /abs/path, `sqlite://rel/path` → rel/path, None → the default file."""
    if not database_url:
        return default
    return Path(database_url[len("sqlite://"):])


def is_postgres(database_url: str | None) -> bool:
    return bool(database_url) and database_url.startswith(("postgres://", "postgresql://"))  # type: ignore[union-attr]


__all__ = ["CommitListener", "Store", "StoreConn", "WriteJob", "WriteOutcome", "is_postgres", "open_store", "sqlite_file"]
