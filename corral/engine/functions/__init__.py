"""The function kinds, their decorators, and the registry that finds a function by `module:function`."""

from .registry import (
    FunctionSpec,
    Registry,
    action,
    canonical_path,
    for_runners,
    internal_action,
    internal_mutation,
    internal_query,
    mutation,
    query,
)

__all__ = [
    "FunctionSpec", "Registry", "action", "canonical_path", "for_runners", "internal_action",
    "internal_mutation", "internal_query", "mutation", "query",
]
