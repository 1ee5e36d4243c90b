"""Functions the fixture apps lack, for the interop tests: queries that fail in ways a client must report."""

from typing import Any

from corral import ConvexError, QueryCtx, query


@query
def refuse(ctx: QueryCtx, code: str) -> None:
    """Always fails with a ConvexError carrying structured data."""
    raise ConvexError({"code": code, "detail": ["a", 1.5]})


@query
def refuse_text(ctx: QueryCtx, text: str) -> None:
    """Always fails with a ConvexError whose data is a plain string."""
    raise ConvexError(text)


@query
def crash(ctx: QueryCtx) -> Any:
    """Fails with an ordinary exception (not a ConvexError)."""
    raise RuntimeError("kaboom")
