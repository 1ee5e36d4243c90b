from corral import MutationCtx, QueryCtx, mutation, query

from .schema import Message


@query
def list(ctx: QueryCtx) -> list[Message]:
    """All messages, oldest first."""
    return ctx.db.query(Message).collect()


@mutation
def send(ctx: MutationCtx, body: str, author: str | None = None) -> None:
    """A signed-in caller sends under the name in their identity; an anonymous one passes `author`."""
    user = ctx.auth.get_user_identity()
    name = user.get("name") if user is not None else None
    if not isinstance(name, str) or not name:
        name = author or "anonymous"
    ctx.db.insert(Message(author=name, body=body))
