from typing import Any

from corral import QueryCtx, query


@query
def whoami(ctx: QueryCtx) -> Any:
    """The caller's identity (`tokenIdentifier`, `subject`, `issuer`, `name`, `email`…), or None."""
    return ctx.auth.get_user_identity()
