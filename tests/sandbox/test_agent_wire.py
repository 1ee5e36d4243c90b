"""The agent survives malformed frames: it answers an error, or drops only that connection."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path
from typing import Any

from corral.sandbox.agent import wire
from corral.sandbox.agent_client import AgentClient
from corral.sandbox.protocol import ProcessConfig

from .conftest import HostBox, run


class RawClient:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buf = bytearray()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, header: Any, payload: bytes = b"") -> None:
        head = json.dumps(header).encode()
        self.send_raw(struct.pack(">II", len(head), len(payload)) + head + payload)

    def recv(self) -> dict[str, Any]:
        while True:
            frame = wire.take_frame(self.buf)
            if frame is not None:
                return wire.parse_header(frame[0])
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the agent closed the connection")
            self.buf += data

    def closed_by_agent(self) -> bool:
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True


def test_garbage_frames_get_errors_and_the_agent_keeps_serving(root: Path) -> None:
    async def scenario() -> None:
        async with HostBox(root) as sandbox:
            path = sandbox.client.socket_path
            bystander = AgentClient(path)
            try:
                await bystander.ping()
                raw = RawClient(path)
                raw.send_raw(struct.pack(">II", 5, 3) + b"{nope" + b"abc")  # not JSON
                assert raw.recv()["err"]["kind"] == "BadRequest"
                raw.send([1, 2, 3])  # not an object
                assert "not a JSON object" in raw.recv()["err"]["message"]
                raw.send_raw(struct.pack(">II", 2, 0) + b"\xff\xfe")  # not UTF-8
                assert raw.recv()["err"]["kind"] == "BadRequest"
                raw.send({"op": "ping"})  # no id
                assert "integer id" in raw.recv()["err"]["message"]
                raw.send({"id": 7, "op": "launch-missiles"})
                assert raw.recv() == {"id": 7, "err": {"kind": "BadRequest", "message": "unknown op 'launch-missiles'"}}
                for bad in ({"id": 8, "op": "start", "cmd": 5}, {"id": 8, "op": "start", "cmd": "x", "args": "no"},
                            {"id": 8, "op": "start", "cmd": "x", "pty": {"cols": -1}},
                            {"id": 8, "op": "input", "pid": "x"}, {"id": 8, "op": "ls", "path": 3},
                            {"id": 8, "op": "ls", "path": "/", "depth": "deep"},
                            {"id": 8, "op": "signal", "pid": None}, {"id": 8, "op": "resize", "pid": 1}):
                    raw.send(bad)
                    answer = raw.recv()
                    assert answer["id"] == 8 and "err" in answer, (bad, answer)
                raw.send({"id": 9, "op": "ping"})  # the same connection still works
                assert raw.recv()["ok"]["pid"] > 0
                raw.send_raw(struct.pack(">II", 0xFFFFFFFF, 0xFFFFFFFF))  # no frame boundary left
                assert "over the limit" in raw.recv()["err"]["message"]
                assert raw.closed_by_agent()
                half = RawClient(path)
                half.send_raw(struct.pack(">II", 100, 0) + b"{")  # a client that dies mid-frame
                half.sock.close()
                assert (await bystander.ping())["pid"] > 0  # the others were never disturbed
                out = await sandbox.processes.start(ProcessConfig(cmd="true"))
                assert await anext(out)
                await out.aclose()  # type: ignore[attr-defined]
            finally:
                await bystander.close()

    run(scenario())


def test_every_op_with_nonsense_fields_is_answered(root: Path) -> None:
    import random

    rng = random.Random(7)
    nonsense: list[Any] = [None, True, -1, 0, 2**40, 1.5, "", "x" * 300, [], {}, [1, "a"], {"a": 1},
                           {"cols": 0, "rows": 2}]
    ops = ["ping", "start", "connect", "list", "input", "close_stdin", "signal", "resize", "read", "write", "data",
           "eof", "stat", "ls", "mkdir", "rename", "remove", "watch", "cancel"]
    fields = ["cmd", "args", "envs", "cwd", "pty", "tag", "stdin", "pid", "signal", "cols", "rows", "path", "depth",
              "src", "dst", "recursive"]

    async def scenario() -> None:
        async with HostBox(root) as sandbox:
            raw = RawClient(sandbox.client.socket_path)
            for request_id in range(1, 400):
                header: dict[str, Any] = {"id": request_id, "op": rng.choice(ops)}
                for name in rng.sample(fields, 4):
                    header[name] = rng.choice(nonsense)
                if header["op"] in ("start", "rename", "mkdir", "write", "remove"):
                    header["cwd"] = None
                    for name in ("path", "src", "dst", "cmd"):
                        header.pop(name, None)  # nothing real gets started, made or removed
                raw.send(header, b"payload" if rng.random() < 0.3 else b"")
            raw.send({"id": 1000, "op": "ping"})
            while (answer := raw.recv()).get("id") != 1000:
                pass
            assert answer["ok"]["pid"] > 0
            assert (await sandbox.client.ping())["pid"] == answer["ok"]["pid"]

    run(scenario())
