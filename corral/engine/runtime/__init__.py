"""The engine: runs queries, mutations and actions with their `ctx`, within their limits."""

from .contexts import ActionCtx, MutationCtx, QueryCtx
from .engine import Engine

__all__ = ["ActionCtx", "Engine", "MutationCtx", "QueryCtx"]
