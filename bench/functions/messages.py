"""Chat rooms: the live-query benchmark subscribes to `latest` and writes with `send`."""

from corral import Id, MutationCtx, QueryCtx, mutation, query

from .schema import Message


@query
def latest(ctx: QueryCtx, room: str) -> list[Message]:
    """The room's latest 20 messages, newest first."""
    return ctx.db.query(Message).with_index("by_room", lambda q: q.eq("room", room)).order("desc").take(20)


@mutation
def send(ctx: MutationCtx, room: str, author: str, body: str) -> Id[Message]:
    return ctx.db.insert(Message(room=room, author=author, body=body))
