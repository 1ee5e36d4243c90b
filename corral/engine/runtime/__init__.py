"""The engine: runs queries, mutations and actions with their `ctx`, within their limits."""

from .contexts import ActionCtx, MutationCtx, QueryCtx
from .engine import Engine
from .sandboxes import CommandResult, FileEntry, NewSandbox, NoSandboxes, Sandboxes

__all__ = ["ActionCtx", "CommandResult", "Engine", "FileEntry", "MutationCtx", "NewSandbox", "NoSandboxes", "QueryCtx",
           "Sandboxes"]
