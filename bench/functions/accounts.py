"""Accounts for the fund-transfer benchmark (SpacetimeDB's keynote-2 workload)."""

from corral import ConvexError, Id, MutationCtx, QueryCtx, mutation, query

from .schema import Account

MAX_SEED_BATCH = 10_000


@mutation
def transfer(ctx: MutationCtx, from_id: Id[Account], to_id: Id[Account], amount: int) -> None:
    """Move `amount` from one account to another: reads both, patches both."""
    source = ctx.db.get(from_id)
    target = ctx.db.get(to_id)
    if source is None or target is None:
        raise ConvexError("no such account")
    if amount <= 0 or source.balance < amount:
        raise ConvexError("insufficient funds")
    ctx.db.patch(from_id, {"balance": source.balance - amount})
    ctx.db.patch(to_id, {"balance": target.balance + amount})


@mutation
def seed(ctx: MutationCtx, count: int, balance: int) -> list[Id[Account]]:
    """Insert `count` accounts (at most MAX_SEED_BATCH per call) and return their ids."""
    if not 0 < count <= MAX_SEED_BATCH:
        raise ConvexError(f"seed between 1 and {MAX_SEED_BATCH} accounts per call")
    return [ctx.db.insert(Account(balance=balance)) for _ in range(count)]


@query
def balances(ctx: QueryCtx, ids: list[Id[Account]]) -> int:
    """The sum of the balances of the given accounts (for a conservation check)."""
    total = 0
    for account_id in ids:
        doc = ctx.db.get(account_id)
        total += doc.balance if doc is not None else 0
    return total
