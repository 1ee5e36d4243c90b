"""The official npm `convex` client (1.48.0, Node 20) against live Corral nodes.

Each test runs one script of tests/interop/node/ with `node`; the script drives the client and
prints one JSON line of what it observed, and the test asserts on what a user would notice.
`make install` runs `npm ci` there; without Node.js or node_modules the tests skip locally and
fail under CI=true.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveNode, node_binary, require_tool

pytestmark = pytest.mark.node

NODE_DIR = Path(__file__).resolve().parent / "node"
# The scripts stop themselves after 20 s; this only catches a script that cannot.
SCRIPT_TIMEOUT = 60


@pytest.fixture
def node_scripts() -> str:
    """The `node` binary, once Node.js and the installed npm client are known to be there."""
    binary = node_binary()
    require_tool("Node.js", binary is not None, "install Node.js 20 or newer")
    require_tool("the npm convex client", (NODE_DIR / "node_modules" / "convex").is_dir(),
                 "run `npm ci` in tests/interop/node (make install does)")
    assert binary is not None
    return binary


def run_script(node: str, script: str, *args: str) -> dict[str, Any]:
    try:
        proc = subprocess.run([node, script, *args], cwd=NODE_DIR, capture_output=True, text=True,
                              timeout=SCRIPT_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        stderr = _text(exc.stderr)
        proc = None
    if proc is None:
        pytest.fail(f"node {script} did not exit within {SCRIPT_TIMEOUT} s\nstderr:\n{stderr}", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"node {script} failed (exit {proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}",
                    pytrace=False)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"node {script} printed nothing\nstderr:\n{proc.stderr}"
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def _text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def bodies(messages: list[dict[str, Any]]) -> list[str]:
    return [m["body"] for m in messages]


def int64(n: int) -> dict[str, str]:
    """How the scripts print a bigint (an int64 on the wire)."""
    return {"$bigint": str(n)}


# -- ConvexHttpClient ---------------------------------------------------------------------------

def test_http_client_queries_and_mutates_the_chat(node_scripts: str, chat_node: LiveNode) -> None:
    seen = run_script(node_scripts, "chat_http.mjs", chat_node.url)

    assert seen["before"] == []
    assert seen["sendResult"] is None
    assert [(m["author"], m["body"]) for m in seen["after"]] == [
        ("alice", "hello from npm"), ("bob", "second message")]
    for message in seen["after"]:
        assert isinstance(message["_id"], str) and message["_id"]
        assert isinstance(message["_creationTime"], float | int)
    # failed calls wrote nothing
    assert seen["final"] == seen["after"]


def test_http_client_reports_validation_and_unknown_function_errors(node_scripts: str, chat_node: LiveNode) -> None:
    seen = run_script(node_scripts, "chat_http.mjs", chat_node.url)

    for key in ("wrongType", "missingArg"):
        error = seen[key]
        assert "resolved" not in error, f"{key}: the mutation should have been rejected"
        assert error["isConvexError"] is False
        assert "body" in error["message"], f"{key}: the message should name the field: {error['message']!r}"
    assert "string" in seen["wrongType"]["message"]

    for key, path in (("unknownFunction", "messages:nope"), ("unknownModule", "nowhere:list"),
                      ("wrongKind", "messages:list")):
        error = seen[key]
        assert "resolved" not in error, f"{key}: calling {path} should have been rejected"
        assert error["isConvexError"] is False
        assert path in error["message"]


def test_http_client_convex_errors_carry_their_data(node_scripts: str, live_node: LiveNode) -> None:
    seen = run_script(node_scripts, "app_http.mjs", live_node.url, live_node.admin_key)

    assert seen["noSuchRoom"]["isConvexError"] is True
    assert seen["noSuchRoom"]["name"] == "ConvexError"
    assert seen["noSuchRoom"]["data"] == {"code": "NoSuchRoom", "roomId": seen["missingRoomId"]}

    assert seen["postThenFail"]["isConvexError"] is True
    assert seen["postThenFail"]["data"] == {"code": "Boom"}
    # the failed mutation's insert was rolled back
    assert bodies(seen["latestAfterFailure"]) == ["hi"]

    assert seen["actionError"]["isConvexError"] is True
    assert seen["actionError"]["data"] == {"why": "because"}


def test_http_client_mutation_query_and_action(node_scripts: str, live_node: LiveNode) -> None:
    seen = run_script(node_scripts, "app_http.mjs", live_node.url, live_node.admin_key)

    room = seen["roomId"]
    [message] = seen["latest"]
    assert message["_id"] == seen["postedId"]
    assert (message["room_id"], message["author"], message["body"]) == (room, "ann", "hi")
    # misc:double_post opens two accounts through ctx.run_mutation and returns the count
    assert seen["actionResult"] == int64(2)
    # an int64, bytes and a float survive the round trip through misc:echo
    assert seen["echo"] == {"big": int64(2**53 + 1), "bytes": {"$bytes": "AAEC/f7/"}, "ratio": 0.5}


def test_http_client_admin_auth_reaches_internal_functions(node_scripts: str, live_node: LiveNode) -> None:
    seen = run_script(node_scripts, "app_http.mjs", live_node.url, live_node.admin_key)

    assert "resolved" not in seen["internalWithoutAdmin"], "an internal function must not be public"
    assert "rooms:count_all" in seen["internalWithoutAdmin"]["message"]

    assert seen["adminCountBefore"] == int64(1)
    assert isinstance(seen["adminSecretPost"], str)
    assert seen["adminCountAfter"] == int64(2)
    assert [(m["author"], m["body"]) for m in seen["latestAfterAdmin"]] == [("ann", "hi"), ("internal", "from admin")]

    assert "resolved" not in seen["wrongAdminKey"], "a wrong admin key must be refused"


# -- ConvexClient (WebSocket) -------------------------------------------------------------------

def test_ws_client_subscription_sees_another_clients_write(node_scripts: str, chat_node: LiveNode) -> None:
    seen = run_script(node_scripts, "chat_ws.mjs", chat_node.url)

    assert seen["initial"] == []
    assert seen["otherClientSend"] is None
    assert [(m["author"], m["body"]) for m in seen["afterOtherClient"]] == [("writer", "from another client")]
    assert bodies(seen["subscriptionFinal"]) == ["from another client", "my own write", "writer again"]
    assert seen["subscriptionErrors"] == []


def test_ws_client_reads_its_own_writes(node_scripts: str, chat_node: LiveNode) -> None:
    seen = run_script(node_scripts, "chat_ws.mjs", chat_node.url)

    # As soon as mutation() resolves, the subscribed client's view holds the write...
    assert bodies(seen["currentValueAfterOwnWrite"]) == ["from another client", "my own write"]
    assert bodies(seen["queryAfterOwnWrite"]) == ["from another client", "my own write"]
    # ...and a client without subscriptions sees its write in its next query.
    assert bodies(seen["writerQueryAfterOwnWrite"]) == ["from another client", "my own write", "writer again"]


def test_ws_client_errors(node_scripts: str, chat_node: LiveNode) -> None:
    seen = run_script(node_scripts, "chat_ws.mjs", chat_node.url)

    assert "resolved" not in seen["wrongType"]
    assert seen["wrongType"]["isConvexError"] is False
    assert "body" in seen["wrongType"]["message"]
    assert "resolved" not in seen["unknownQuery"]
    assert "messages:nope" in seen["unknownQuery"]["message"]
    # the subscription outlived the failures and kept receiving updates
    assert seen["subscriptionErrors"] == []


def test_ws_client_convex_errors_and_actions(node_scripts: str, live_node: LiveNode) -> None:
    seen = run_script(node_scripts, "app_ws.mjs", live_node.url)

    assert seen["initial"] == []
    assert [(m["author"], m["body"]) for m in seen["currentValueAfterPost"]] == [("ann", "hello over ws")]

    assert seen["noSuchRoom"]["isConvexError"] is True
    assert seen["noSuchRoom"]["data"] == {"code": "NoSuchRoom", "roomId": seen["missingRoomId"]}
    assert seen["postThenFail"]["isConvexError"] is True
    assert seen["postThenFail"]["data"] == {"code": "Boom"}
    assert bodies(seen["latestAfterFailure"]) == ["hello over ws"]

    assert seen["actionResult"] == int64(2)
    assert seen["actionError"]["isConvexError"] is True
    assert seen["actionError"]["data"] == {"why": "because"}

    assert seen["echo"] == {"big": int64(-(2**60)), "bytes": {"$bytes": "AAEC/f7/"}, "ratio": 0.25}

    for key, path in (("unknownMutation", "rooms:nope"), ("unknownAction", "misc:nope"),
                      ("internalWithoutAdmin", "rooms:count_all")):
        assert "resolved" not in seen[key], f"{key} should have been rejected"
        assert seen[key]["isConvexError"] is False
        assert path in seen[key]["message"]
    assert seen["subscriptionErrors"] == []
