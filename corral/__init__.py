"""Corral: a self-hosted backend for products that run AI agents which execute code.

Everything a function author needs is importable from here:

    from corral import Table, index, Id, query, mutation, action, ConvexError
"""

from .engine.auth import UserIdentity
from .engine.errors import ConvexError
from .engine.files import StorageId
from .engine.functions import (
    action,
    for_runners,
    internal_action,
    internal_mutation,
    internal_query,
    mutation,
    query,
)
from .engine.http import HttpRouter
from .engine.runtime import ActionCtx, MutationCtx, QueryCtx
from .engine.scheduling import Crons
from .engine.schema import Id, Table, index

__version__ = "0.1.0"

__all__ = [
    "ActionCtx",
    "ConvexError",
    "Crons",
    "HttpRouter",
    "Id",
    "MutationCtx",
    "QueryCtx",
    "StorageId",
    "Table",
    "UserIdentity",
    "action",
    "for_runners",
    "index",
    "internal_action",
    "internal_mutation",
    "internal_query",
    "mutation",
    "query",
]
