"""Corral: a self-hosted backend for products that run AI agents which execute code.

Everything a function author needs is importable from here:

    from corral import Table, index, Id, query, mutation, action, ConvexError
"""

from .engine.auth import UserIdentity
from .engine.context import ActionCtx, MutationCtx, QueryCtx
from .engine.crons import Crons
from .engine.errors import ConvexError
from .engine.file_storage import StorageId
from .engine.functions import (
    action,
    for_runners,
    internal_action,
    internal_mutation,
    internal_query,
    mutation,
    query,
)
from .engine.http_actions import HttpRouter
from .engine.schema import Table, index
from .engine.validators import Id

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
