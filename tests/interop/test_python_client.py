"""The official PyPI `convex` client (0.8.1) against live Corral nodes.

The client is a Rust extension: its blocking calls hold the GIL and retry forever when a server
misbehaves, so nothing in this process could interrupt a hung call (not a thread, not
pytest-timeout). Each test therefore runs one scenario of python_client_scenarios.py in its own
process, kills it at a deadline, and asserts on the JSON it printed. A hang fails fast, naming
the step the client was stuck at.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveNode

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "python_client_scenarios.py"
INTEROP_APP = HERE / "app"
# Every scenario takes a few seconds; this only catches a client that hangs.
SCENARIO_TIMEOUT = 20


def run_scenario(name: str, node: LiveNode, *, admin: bool = False) -> dict[str, Any]:
    args = [sys.executable, str(SCENARIOS), name, node.url]
    if admin:
        args.append(node.admin_key)
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        progress = _tail(exc.stderr)
        proc = None
    if proc is None:
        pytest.fail(f"the Python client hung: scenario {name} did not finish within {SCENARIO_TIMEOUT} s; "
                    f"its progress (the last step is where it was stuck):\n{progress}", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"scenario {name} failed (exit {proc.returncode}):\n{_tail(proc.stderr)}", pytrace=False)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"scenario {name} printed nothing:\n{_tail(proc.stderr)}"
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def _tail(data: bytes | str | None, lines: int = 40) -> str:
    text = data.decode(errors="replace") if isinstance(data, bytes) else (data or "")
    return "\n".join(text.splitlines()[-lines:])


def bodies(messages: list[dict[str, Any]]) -> list[str]:
    return [m["body"] for m in messages]


def int64(n: int) -> dict[str, str]:
    """How a scenario prints a ConvexInt64."""
    return {"$int64": str(n)}


@pytest.fixture
def errors_node(live_node_factory) -> LiveNode:  # type: ignore[no-untyped-def]
    """A node serving tests/interop/app, whose queries fail with ConvexError and plain errors."""
    return live_node_factory(functions=INTEROP_APP)  # type: ignore[no-any-return]


# -- examples/chat ------------------------------------------------------------------------------

def test_query_and_mutation(chat_node: LiveNode) -> None:
    seen = run_scenario("chat_query_mutation", chat_node)

    assert seen["before"] == []
    assert seen["send_result"] is None
    [message] = seen["after"]
    assert (message["author"], message["body"]) == ("ada", "hello from python")
    assert isinstance(message["_id"], str) and message["_id"]
    assert isinstance(message["_creationTime"], float)


def test_subscription_sees_another_clients_writes(chat_node: LiveNode) -> None:
    seen = run_scenario("chat_subscribe", chat_node)

    assert seen["initial"] == []
    assert [(m["author"], m["body"]) for m in seen["after_other_client"]] == [("writer", "from another client")]
    assert bodies(seen["after_second"]) == ["from another client", "second from writer"]


def test_read_your_writes(chat_node: LiveNode) -> None:
    seen = run_scenario("chat_read_your_writes", chat_node)

    assert seen["lists_after_each_write"] == [
        ["write 0"],
        ["write 0", "write 1"],
        ["write 0", "write 1", "write 2"],
    ]


# -- tests/fixtures/app ---------------------------------------------------------------------------

def test_action(live_node: LiveNode) -> None:
    seen = run_scenario("app_action", live_node)

    # misc:double_post opens two accounts through ctx.run_mutation and returns the count
    assert seen["action_result"] == int64(2)
    assert seen["account_count"] == int64(2)


def test_convex_error_from_an_action(live_node: LiveNode) -> None:
    seen = run_scenario("app_action_convex_error", live_node)

    assert seen["error"]["is_convex_error"] is True
    assert seen["error"]["data"] == {"why": "because"}


def test_convex_error_from_a_mutation(live_node: LiveNode) -> None:
    """A mutation that raises ConvexError rejects with its data, and its writes are rolled back.

    The Rust-based client completes a mutation whose MutationResponse carries errorData only when
    the next Transition arrives (only plain error messages complete at once), as it does for a
    successful one; Convex sends a Transition after every mutation, failed or not.
    """
    seen = run_scenario("app_mutation_convex_error", live_node)

    assert seen["no_such_room"]["is_convex_error"] is True
    assert seen["no_such_room"]["data"] == {"code": "NoSuchRoom", "roomId": seen["missing_room_id"]}
    assert seen["post_then_fail"]["is_convex_error"] is True
    assert seen["post_then_fail"]["data"] == {"code": "Boom"}
    # the failed mutation's insert was rolled back
    assert seen["latest"] == []


def test_convex_error_from_a_query_and_a_subscription(errors_node: LiveNode) -> None:
    seen = run_scenario("query_convex_error", errors_node)

    assert seen["object_data"]["is_convex_error"] is True
    assert seen["object_data"]["data"] == {"code": "Nope", "detail": ["a", 1.5]}
    assert seen["string_data"]["is_convex_error"] is True
    assert seen["string_data"]["data"] == "not today"
    assert seen["subscription"]["is_convex_error"] is True
    assert seen["subscription"]["data"] == {"code": "Subscribed", "detail": ["a", 1.5]}
    # an ordinary exception is an error with a message, not a ConvexError
    assert seen["crash"]["is_convex_error"] is False
    assert "kaboom" in seen["crash"]["message"]


def test_validation_errors_name_the_field(live_node: LiveNode) -> None:
    seen = run_scenario("app_validation_errors", live_node)

    for key, field in (("wrong_type", "author"), ("missing_arg", "body"), ("query_wrong_type", "count")):
        error = seen[key]
        assert "returned" not in error, f"{key}: the call should have failed"
        assert error["is_convex_error"] is False
        assert field in error["message"], f"{key}: the message should name `{field}`: {error['message']!r}"
    assert seen["latest"] == []


def test_unknown_functions(live_node: LiveNode) -> None:
    seen = run_scenario("app_unknown_functions", live_node)

    for key, path in (("query", "rooms:nope"), ("mutation", "rooms:nope"), ("action", "misc:nope"),
                      ("module", "nowhere:list")):
        error = seen[key]
        assert "returned" not in error, f"calling {path} should have failed"
        assert error["is_convex_error"] is False
        assert path in error["message"]
    assert seen["after"] == []


def test_python_ints_arrive_as_floats_for_int_parameters(live_node: LiveNode) -> None:
    seen = run_scenario("app_int_args", live_node)

    assert seen["latest_5"] == ["m2", "m3", "m4", "m5", "m6"]
    assert seen["latest_int64_2"] == ["m5", "m6"]
    assert seen["total_balance"] == int64(2**40 + 3)
    assert "returned" not in seen["fractional_count"], "2.5 is not an int"
    assert "count" in seen["fractional_count"]["message"]


def test_int64_and_bytes_round_trip(live_node: LiveNode) -> None:
    seen = run_scenario("app_int64_and_bytes", live_node)

    echo = seen["echo"]
    assert echo["big"] == int64(2**62)
    assert echo["max"] == int64(2**63 - 1)
    assert echo["min"] == int64(-(2**63))
    assert echo["nested"] == [int64(-1), {"$bytes": "AP8="}]
    assert echo["empty_bytes"] == {"$bytes": ""}
    assert seen["bytes_equal"] is True
    # a Python int is a Convex float64: it comes back as a float
    assert echo["plain_int"] == 5.0
    assert seen["types"]["plain_int"] == "float"
    assert seen["types"]["float"] == "float"
    assert seen["types"]["bytes"] == "bytes"
    assert seen["kitchen"] == {"count": int64(7), "blob": {"$bytes": "AQID"}, "blob_type": "bytes"}


def test_admin_auth_reaches_internal_functions(live_node: LiveNode) -> None:
    seen = run_scenario("app_admin_auth", live_node, admin=True)

    assert "returned" not in seen["without_admin"], "an internal function must not be public"
    assert "rooms:count_all" in seen["without_admin"]["message"]
    assert seen["count_before"] == int64(1)
    assert isinstance(seen["secret_post"], str)
    assert seen["count_after"] == int64(2)
    assert [(m["author"], m["body"]) for m in seen["latest"]] == [("ada", "public"), ("internal", "from admin")]


def test_legacy_http_client(live_node: LiveNode) -> None:
    pytest.importorskip("convex.http_client", reason="this convex version has no legacy HTTP client")
    seen = run_scenario("legacy_http_client", live_node, admin=True)

    [message] = seen["latest"]
    assert (message["author"], message["body"]) == ("ada", "over http")
    assert seen["action_result"] == int64(2)
    assert seen["no_such_room"]["is_convex_error"] is True
    assert seen["no_such_room"]["data"]["code"] == "NoSuchRoom"
    assert seen["action_error"]["is_convex_error"] is True
    assert seen["action_error"]["data"] == {"why": "because"}
    assert "author" in seen["wrong_type"]["message"]
    assert "rooms:nope" in seen["unknown"]["message"]
    assert seen["echo"] == {"big": int64(-(2**40)), "bytes": {"$bytes": "ABD/"}}
    assert "returned" not in seen["without_admin"]
    assert seen["with_admin"] == int64(1)
