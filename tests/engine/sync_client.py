"""A minimal, strict client of Convex's sync protocol for tests that look at the frames."""

from __future__ import annotations

import base64
import struct
import time
import uuid
from typing import Any

import orjson
from websockets.sync.client import ClientConnection, connect


def ts_of(wire: str) -> int:
    return int(struct.unpack("<Q", base64.b64decode(wire))[0])


class SyncClient:
    def __init__(self, url: str, session_id: str | None = None) -> None:
        self.ws: ClientConnection = connect(url.replace("http://", "ws://") + "/api/sync", open_timeout=10).__enter__()
        self.session_id = session_id or str(uuid.uuid4())
        self.query_set = 0
        self.identity = 0
        self.version = {"querySet": 0, "identity": 0, "ts": 0}
        self.results: dict[int, Any] = {}
        self.next_query = 0
        self.next_request = 0
        self.send({"type": "Connect", "sessionId": self.session_id, "connectionCount": 0, "lastCloseReason": None, "clientTs": 0})

    def send(self, message: dict[str, Any]) -> None:
        self.ws.send(orjson.dumps(message).decode())

    def recv(self, timeout: float = 30.0) -> dict[str, Any]:
        message = orjson.loads(self.ws.recv(timeout=timeout))
        if message["type"] == "Transition":
            start = message["startVersion"]
            assert (start["querySet"], start["identity"], ts_of(start["ts"])) == (
                self.version["querySet"], self.version["identity"], self.version["ts"]), "Transition does not chain"
            end = message["endVersion"]
            assert ts_of(end["ts"]) >= self.version["ts"]
            self.version = {"querySet": end["querySet"], "identity": end["identity"], "ts": ts_of(end["ts"])}
            for mod in message["modifications"]:
                if mod["type"] == "QueryUpdated":
                    self.results[mod["queryId"]] = mod["value"]
                elif mod["type"] == "QueryFailed":
                    self.results[mod["queryId"]] = ("failed", mod["errorMessage"], mod.get("errorData"))
                elif mod["type"] == "QueryRemoved":
                    self.results.pop(mod["queryId"], None)
        return message

    def recv_until(self, predicate, timeout: float = 30.0) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching message")
            message = self.recv(timeout=left)
            if predicate(message):
                return message

    def subscribe(self, path: str, args: dict[str, Any] | None = None) -> int:
        query_id = self.next_query
        self.next_query += 1
        self.send({"type": "ModifyQuerySet", "baseVersion": self.query_set, "newVersion": self.query_set + 1,
                   "modifications": [{"type": "Add", "queryId": query_id, "udfPath": path, "args": [args or {}]}]})
        self.query_set += 1
        return query_id

    def unsubscribe(self, query_id: int) -> None:
        self.send({"type": "ModifyQuerySet", "baseVersion": self.query_set, "newVersion": self.query_set + 1,
                   "modifications": [{"type": "Remove", "queryId": query_id}]})
        self.query_set += 1

    def mutation(self, path: str, args: dict[str, Any], request_id: int | None = None) -> dict[str, Any]:
        """Send a mutation and wait for its response and for a Transition reaching its ts."""
        if request_id is None:
            request_id = self.next_request
            self.next_request += 1
        self.send({"type": "Mutation", "requestId": request_id, "udfPath": path, "args": [args]})
        response = self.recv_until(lambda m: m["type"] == "MutationResponse" and m["requestId"] == request_id)
        if response["success"]:
            target = ts_of(response["ts"])
            if self.version["ts"] < target:
                self.recv_until(lambda m: m["type"] == "Transition" and self.version["ts"] >= target)
        return response

    def close(self) -> None:
        self.ws.close()
