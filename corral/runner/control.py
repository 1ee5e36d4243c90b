"""How a runner reaches the engine: calls (register, heartbeat, reports) and live queries (its work).

`EngineControl` serves the node's embedded runner in process, through the node's own live-query
hub; `corral.runner.convex_control.ConvexControl` serves a remote runner over the Convex
protocol. Both call the same `runners:*` functions as a runner key.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

import orjson

from ..engine.auth import Caller, MachineKey
from ..engine.errors import ConvexError, FunctionError
from ..engine.live import ClientState, Subscription, SyncHub
from ..engine.runtime import Engine
from ..engine.values import decode, encode


class ControlError(Exception):
    """A runner function refused the call; `code` is its ConvexError code when it had one."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ControlPlane(Protocol):
    async def mutation(self, path: str, args: dict[str, Any]) -> Any: ...
    async def query(self, path: str, args: dict[str, Any]) -> Any: ...
    def subscribe(self, path: str, args: dict[str, Any]) -> AsyncIterator[Any]:
        """Every new result of a live query (the first at once); ControlError when it fails."""

    async def close(self) -> None: ...


def embedded_runner_caller(runner_name: str) -> Caller:
    """The identity the node's embedded runner calls with: a runner key that exists only in process."""
    return Caller.api_key(MachineKey(id=f"node:{runner_name}", name=f"embedded runner {runner_name}", kind="runner"))


def _control_error(exc: FunctionError) -> ControlError:
    data = getattr(exc, "data", None) if isinstance(exc, ConvexError) else None
    code = data.get("code") if isinstance(data, dict) else None
    message = data.get("message", exc.message) if isinstance(data, dict) else exc.message
    return ControlError(str(message), code if isinstance(code, str) else None)


class EngineControl:
    """The engine in this process, called as `caller` (the embedded runner's identity)."""

    def __init__(self, engine: Engine, hub: SyncHub, caller: Caller) -> None:
        self.engine = engine
        self.hub = hub
        self.caller = caller

    async def mutation(self, path: str, args: dict[str, Any]) -> Any:
        try:
            return await self.engine.call_mutation(path, args, self.caller)
        except FunctionError as exc:
            raise _control_error(exc) from None

    async def query(self, path: str, args: dict[str, Any]) -> Any:
        try:
            return await self.engine.call_query(path, args, self.caller)
        except FunctionError as exc:
            raise _control_error(exc) from None

    async def subscribe(self, path: str, args: dict[str, Any]) -> AsyncIterator[Any]:
        """A subscription of the node's live-query hub, as a socket client's would be."""
        updates: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()

        def send(message: dict[str, Any]) -> None:
            message = orjson.loads(orjson.dumps(message))  # the hub sends pre-serialized fragments
            for mod in message.get("modifications", ()):
                if mod["type"] == "QueryUpdated":
                    updates.put_nowait((True, mod["value"]))
                elif mod["type"] == "QueryFailed":
                    updates.put_nowait((False, failure(mod["errorMessage"], mod.get("errorData"))))

        try:
            spec = self.engine.resolve(path, "query", self.caller)
            valid = self.engine.prepare_args(spec, args)
        except FunctionError as exc:
            raise _control_error(exc) from None
        self.hub.bind(asyncio.get_running_loop())
        client = ClientState(send=send, caller=self.caller)
        client.query_set_version = 1
        self.hub.add_client(client)
        sub = Subscription(query_id=0, path=spec.path, args=valid,
                           args_key=orjson.dumps(encode(args), option=orjson.OPT_SORT_KEYS), spec=spec, error=None)
        self.hub.add_query(client, sub)
        self.hub.schedule()
        try:
            while True:
                ok, value = await updates.get()
                if not ok:
                    raise value
                yield decode(value)
        finally:
            self.hub.remove_client(client)

    async def close(self) -> None:
        return None


def failure(message: str, error_data: Any) -> ControlError:
    """A ControlError from a failed function's wire form (Convex-encoded `errorData`)."""
    data = decode(error_data) if error_data is not None else None
    if isinstance(data, dict):
        code = data.get("code")
        return ControlError(str(data.get("message", message)), code if isinstance(code, str) else None)
    return ControlError(message)
