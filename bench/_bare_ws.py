"""Transport ceiling for bench.transfers: a bare Starlette WebSocket endpoint, no engine.

It answers just enough of the sync protocol for the benchmark client: a `Mutation` of
`accounts:transfer` runs as one SQLite transaction (BEGIN IMMEDIATE; read both balances;
update both; COMMIT) right on the event loop, then the endpoint sends a `MutationResponse`
with a commit timestamp and a `Transition` up to it, as Corral does. `accounts:seed`
inserts accounts and returns their ids. Served by uvicorn with the same WebSocket
implementation as a Corral node (websockets-sansio, uvloop when installed).

    python -m bench._bare_ws --port P --db FILE
"""

from __future__ import annotations

import argparse
import base64
import os
import sqlite3
import time
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


def _wire(ts: int) -> str:
    return base64.b64encode(ts.to_bytes(8, "little")).decode()


class Bank:
    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-65536"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute("CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL)")
        self.last_ts = 0

    def next_ts(self) -> int:
        self.last_ts = max(time.time_ns(), self.last_ts + 1)
        return self.last_ts

    def transfer(self, args: dict[str, Any]) -> tuple[bool, Any]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            row_from = db.execute("SELECT balance FROM accounts WHERE id = ?", (args["from_id"],)).fetchone()
            row_to = db.execute("SELECT balance FROM accounts WHERE id = ?", (args["to_id"],)).fetchone()
            amount = int(args["amount"])
            if row_from is None or row_to is None:
                db.execute("ROLLBACK")
                return False, "no such account"
            if amount <= 0 or row_from[0] < amount:
                db.execute("ROLLBACK")
                return False, "insufficient funds"
            db.execute("UPDATE accounts SET balance = ? WHERE id = ?", (row_from[0] - amount, args["from_id"]))
            db.execute("UPDATE accounts SET balance = ? WHERE id = ?", (row_to[0] + amount, args["to_id"]))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return True, None

    def seed(self, args: dict[str, Any]) -> tuple[bool, Any]:
        count, balance = int(args["count"]), decode_int(args["balance"])
        ids = [base64.b32encode(os.urandom(20)).decode().lower() for _ in range(count)]
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("INSERT INTO accounts (id, balance) VALUES (?, ?)", [(i, balance) for i in ids])
        self.db.execute("COMMIT")
        return True, ids


def decode_int(value: Any) -> int:
    if isinstance(value, dict):
        return int.from_bytes(base64.b64decode(value["$integer"]), "little", signed=True)
    return int(value)


def build_app(db_path: str) -> Starlette:
    bank = Bank(db_path)
    handlers = {"accounts:transfer": bank.transfer, "accounts:seed": bank.seed}

    async def sync(ws: WebSocket) -> None:
        await ws.accept()
        sent_ts = _wire(0)
        try:
            while True:
                message = orjson.loads(await ws.receive_text())
                if message["type"] != "Mutation":
                    continue
                handler = handlers.get(message["udfPath"])
                if handler is None:
                    ok, result = False, f"no function {message['udfPath']}"
                else:
                    ok, result = handler(message["args"][0])
                ts = _wire(bank.next_ts()) if ok else None
                await ws.send_text(orjson.dumps({"type": "MutationResponse", "requestId": message["requestId"], "success": ok,
                                                 "result": result, "ts": ts, "logLines": []}).decode())
                if ok:
                    await ws.send_text(orjson.dumps({"type": "Transition",
                                                     "startVersion": {"querySet": 0, "identity": 0, "ts": sent_ts},
                                                     "endVersion": {"querySet": 0, "identity": 0, "ts": ts},
                                                     "modifications": []}).decode())
                    sent_ts = ts
        except WebSocketDisconnect:
            return

    return Starlette(routes=[WebSocketRoute("/api/sync", sync)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True)
    args = parser.parse_args()
    uvicorn.run(build_app(args.db), host="127.0.0.1", port=args.port, log_level="warning", ws="websockets-sansio",
                lifespan="off", ws_max_size=32 << 20)


if __name__ == "__main__":
    main()
