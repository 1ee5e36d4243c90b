"""One exception hierarchy for the engine. Messages say what was wrong and what to do."""

from __future__ import annotations

from typing import Any


class CorralError(Exception):
    """Base of every error Corral raises on purpose."""

    code = "InternalServerError"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(CorralError):
    """The request itself is malformed: bad JSON, a missing field, a bad header."""

    code = "BadRequest"
    http_status = 400

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code:
            self.code = code


class Unauthenticated(CorralError):
    code = "Unauthenticated"
    http_status = 401


class FunctionError(CorralError):
    """A failure that belongs to a function call: reported as Convex's `status: error`."""

    code = "FunctionError"
    http_status = 200
    read_set: Any = None  # what a failed query had read (Engine.execute_query): its subscription waits on it


class ConvexError(FunctionError):
    """A user error that carries `data` to the client, like Convex's `ConvexError`."""

    def __init__(self, data: Any) -> None:
        message = data if isinstance(data, str) else "ConvexError"
        super().__init__(message)
        self.data = data


def path_hint(path: object) -> str:
    """What to add to a 'no such function' message when the path is not shaped module:function."""
    if isinstance(path, str) and ":" in path:
        return ""
    return " (a function path is module:function, e.g. messages:list)"


class FunctionNotFound(FunctionError):
    def __init__(self, path: str, kind: str) -> None:
        super().__init__(f"Could not find public function for '{path}' ({kind}){path_hint(path)}. "
                         "Did you forget to run it with the right kind or to serve its module?")
        self.path = path


class ArgumentValidationError(FunctionError):
    pass


class ReturnValidationError(FunctionError):
    pass


class DocumentValidationError(FunctionError):
    pass


class LimitExceeded(FunctionError):
    pass


class FunctionTimeout(FunctionError):
    pass


class ReadOnlyViolation(FunctionError):
    pass


class SchemaError(CorralError):
    """The schema or the function folder cannot be served; raised at start."""

    code = "SchemaError"


class ConfigError(CorralError):
    code = "ConfigError"


class SerializationConflict(CorralError):
    """A serializable transaction lost a race; retried by the runtime, surfaced only when the budget is spent."""

    code = "OptimisticConcurrencyControlFailure"
    http_status = 503


class FunctionInterrupted(BaseException):
    """Raised asynchronously inside a worker thread whose function ran past its time limit.

    A BaseException so that a user's `except Exception` cannot swallow it.
    """
