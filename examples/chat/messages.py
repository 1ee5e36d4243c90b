from corral import MutationCtx, QueryCtx, mutation, query

from .schema import Message


@query
def list(ctx: QueryCtx) -> list[Message]:
    """All messages, oldest first."""
    return ctx.db.query(Message).collect()


@mutation
def send(ctx: MutationCtx, author: str, body: str) -> None:
    ctx.db.insert(Message(author=author, body=body))
