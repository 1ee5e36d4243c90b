"""A remote runner's way to the engine: the node's Convex protocol, authenticated with a runner key.

Calls go as `POST /api/mutation|query`; the work list is a live query over the WebSocket sync
protocol (`/api/sync`: Connect, Authenticate, ModifyQuerySet; Transitions push each new result),
reconnecting with backoff when the socket drops.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import structlog
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from ..engine.values import decode
from .control import ControlError, failure

log = structlog.get_logger("corral.runner")

RECONNECT_MAX = 10.0


class ConvexControl:
    def __init__(self, url: str, key: str) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.client = httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {key}"},
                                        timeout=httpx.Timeout(30.0, connect=10.0))

    async def _call(self, kind: str, path: str, args: dict[str, Any]) -> Any:
        try:
            response = await self.client.post(f"/api/{kind}", json={"path": path, "args": args, "format": "convex_encoded_json"})
        except httpx.HTTPError as exc:
            raise ControlError(f"cannot reach {self.url}: {exc}", "Unreachable") from None
        try:
            body = response.json()
        except ValueError:
            raise ControlError(f"{self.url} answered HTTP {response.status_code}: {response.text[:200]}") from None
        if response.status_code == 401:
            raise ControlError(str(body.get("message", "the runner key was refused")), "Unauthenticated")
        if response.status_code != 200:
            raise ControlError(str(body.get("message", f"HTTP {response.status_code}")), body.get("code"))
        if body.get("status") != "success":
            raise failure(str(body.get("errorMessage", "the function failed")), body.get("errorData"))
        return decode(body.get("value"))

    async def mutation(self, path: str, args: dict[str, Any]) -> Any:
        return await self._call("mutation", path, args)

    async def query(self, path: str, args: dict[str, Any]) -> Any:
        return await self._call("query", path, args)

    async def subscribe(self, path: str, args: dict[str, Any]) -> AsyncIterator[Any]:
        """Each new result of a live query; reconnects when the socket drops. ControlError when the
        query fails or the key is refused."""
        ws_url = self.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/api/sync"
        session = str(uuid.uuid4())
        attempt = 0
        delay = 0.5
        while True:
            try:
                async with connect(ws_url, open_timeout=10, max_size=None) as ws:
                    await ws.send(orjson.dumps({"type": "Connect", "sessionId": session, "connectionCount": attempt,
                                                "lastCloseReason": None, "clientTs": 0}).decode())
                    await ws.send(orjson.dumps({"type": "Authenticate", "tokenType": "User", "value": self.key,
                                                "baseVersion": 0}).decode())
                    await ws.send(orjson.dumps({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
                        {"type": "Add", "queryId": 0, "udfPath": path, "args": [args]}]}).decode())
                    delay = 0.5
                    async for raw in ws:
                        message = orjson.loads(raw)
                        kind = message.get("type")
                        if kind == "Transition":
                            for mod in message.get("modifications", ()):
                                if mod.get("queryId") != 0:
                                    continue
                                if mod["type"] == "QueryUpdated":
                                    yield decode(mod["value"])
                                elif mod["type"] == "QueryFailed":
                                    raise failure(mod.get("errorMessage", "the query failed"), mod.get("errorData"))
                        elif kind == "AuthError":
                            raise ControlError(str(message.get("error", "the runner key was refused")), "Unauthenticated")
                        elif kind == "FatalError":
                            raise ControlError(str(message.get("error", "the node closed the connection")))
            except (TimeoutError, OSError, WebSocketException) as exc:
                log.warning("runner.sync_reconnecting", url=ws_url, error=str(exc), retry_in=delay)
            attempt += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def close(self) -> None:
        await self.client.aclose()
