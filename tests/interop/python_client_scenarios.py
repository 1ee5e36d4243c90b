"""Scenarios for the official PyPI `convex` client, one per process, driven by test_python_client.py.

Why a process per scenario: `convex.ConvexClient` is a Rust extension whose blocking calls
(`query`, `mutation`, `action`, `next()` on a subscription) hold the GIL, and it retries forever
when a server misbehaves. Nothing inside the process can interrupt it — not a watchdog thread,
not SIGALRM, not pytest-timeout — so the test runs each scenario here and kills it at a deadline.

usage: python python_client_scenarios.py SCENARIO URL [ADMIN_KEY]

Progress goes to stderr as `step: ...` and `observed: ...` lines (so a hang shows where it was);
the observations go to stdout as one JSON line at the end. Convex values are made JSON-safe:
ConvexInt64 → {"$int64": "<decimal>"}, bytes → {"$bytes": "<base64>"}; floats stay floats.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import convex
from convex import ConvexClient, ConvexError, ConvexInt64

Scenario = Callable[[str, str | None], None]
SCENARIOS: dict[str, Scenario] = {}
observed: dict[str, Any] = {}


def scenario(fn: Scenario) -> Scenario:
    SCENARIOS[fn.__name__] = fn
    return fn


def step(text: str) -> None:
    sys.stderr.write(f"step: {text}\n")
    sys.stderr.flush()


def plain(value: Any) -> Any:
    """A Convex value as JSON, keeping int64 and bytes distinguishable from numbers and strings."""
    if isinstance(value, ConvexInt64):
        return {"$int64": str(value.value)}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def observe(key: str, value: Any) -> Any:
    observed[key] = plain(value)
    sys.stderr.write(f"observed: {key} = {json.dumps(observed[key])}\n")
    sys.stderr.flush()
    return value


def failure(call: Callable[[], Any]) -> dict[str, Any]:
    """Run a call expected to raise; describe what it raised (or what it returned instead)."""
    try:
        value = call()
    except Exception as exc:  # noqa: BLE001 - the exception is what is observed
        return {
            "type": type(exc).__name__,
            "is_convex_error": isinstance(exc, ConvexError),
            "message": str(exc),
            "data": plain(getattr(exc, "data", None)),
        }
    return {"returned": plain(value)}


def absent_id_like(doc_id: str) -> str:
    """An id of the same table as `doc_id` that names no document (last base32 digit changed)."""
    return doc_id[:-1] + ("b" if doc_id[-1] == "a" else "a")


def bodies(messages: list[dict[str, Any]]) -> list[str]:
    return [m["body"] for m in messages]


def next_matching(subscription: Any, predicate: Callable[[Any], bool], limit: int = 50) -> Any:
    """The first value the subscription yields that satisfies predicate (bounded in count)."""
    for _, value in zip(range(limit), subscription, strict=False):
        if predicate(value):
            return value
    raise AssertionError(f"no matching subscription value within {limit} updates")


# -- examples/chat ---------------------------------------------------------------------------

@scenario
def chat_query_mutation(url: str, _key: str | None) -> None:
    client = ConvexClient(url)
    step("query messages:list on an empty table")
    observe("before", client.query("messages:list"))
    step("mutation messages:send")
    observe("send_result", client.mutation("messages:send", {"author": "ada", "body": "hello from python"}))
    step("query messages:list after the send")
    observe("after", client.query("messages:list"))


@scenario
def chat_subscribe(url: str, _key: str | None) -> None:
    watcher = ConvexClient(url)
    writer = ConvexClient(url)
    step("subscribing to messages:list")
    subscription = watcher.subscribe("messages:list")
    observe("initial", next(subscription))
    step("another client sends a message")
    writer.mutation("messages:send", {"author": "writer", "body": "from another client"})
    step("iterating the subscription until it shows the other client's message")
    observe("after_other_client", next_matching(subscription, lambda v: "from another client" in bodies(v)))
    step("another client sends a second message")
    writer.mutation("messages:send", {"author": "writer", "body": "second from writer"})
    observe("after_second", next_matching(subscription, lambda v: "second from writer" in bodies(v)))
    subscription.unsubscribe()


@scenario
def chat_read_your_writes(url: str, _key: str | None) -> None:
    client = ConvexClient(url)
    seen = []
    for i in range(3):
        step(f"mutation messages:send #{i}, then query on the same client")
        client.mutation("messages:send", {"author": "ada", "body": f"write {i}"})
        seen.append(bodies(client.query("messages:list")))
    observe("lists_after_each_write", seen)


# -- tests/fixtures/app ----------------------------------------------------------------------

@scenario
def app_action(url: str, _key: str | None) -> None:
    client = ConvexClient(url)
    step("action misc:double_post")
    observe("action_result", client.action("misc:double_post", {"owner": "py"}))
    step("query misc:account_count")
    observe("account_count", client.query("misc:account_count"))


@scenario
def app_action_convex_error(url: str, _key: str | None) -> None:
    client = ConvexClient(url)
    step("action misc:fail_action")
    observe("error", failure(lambda: client.action("misc:fail_action")))


@scenario
def app_mutation_convex_error(url: str, _key: str | None) -> None:
    client = ConvexClient(url)
    step("mutation rooms:create")
    room = observe("room_id", client.mutation("rooms:create", {"name": "lobby"}))
    observe("missing_room_id", absent_id_like(room))
    step("mutation rooms:post to a room that does not exist (raises ConvexError)")
    observe("no_such_room", failure(lambda: client.mutation(
        "rooms:post", {"room_id": absent_id_like(room), "author": "ada", "body": "lost"})))
    step("mutation rooms:post_then_fail (writes, then raises ConvexError)")
    observe("post_then_fail", failure(lambda: client.mutation("rooms:post_then_fail", {"room_id": room})))
    step("query rooms:latest after the failed mutations")
    observe("latest", client.query("rooms:latest", {"room_id": room}))


@scenario
def app_validation_errors(url: str, _key: str | None) -> None:
    client = ConvexClient(url)
    room = client.mutation("rooms:create", {"name": "lobby"})
    step("mutation rooms:post with a number for author")
    observe("wrong_type", failure(lambda: client.mutation("rooms:post", {"room_id": room, "author": 3, "body": "x"})))
    step("mutation rooms:post without body")
    observe("missing_arg", failure(lambda: client.mutation("rooms:post", {"room_id": room, "author": "ada"})))
    step("query rooms:latest with a string for count")
    observe("query_wrong_type", failure(lambda: client.query("rooms:latest", {"room_id": room, "count": "five"})))
    step("query rooms:latest after the failures")
    observe("latest", client.query("rooms:latest", {"room_id": room}))


@scenario
def app_unknown_functions(url: str, _key: str | None) -> None:
    client = ConvexClient(url)
    step("query rooms:nope")
    observe("query", failure(lambda: client.query("rooms:nope")))
    step("mutation rooms:nope")
    observe("mutation", failure(lambda: client.mutation("rooms:nope")))
    step("action misc:nope")
    observe("action", failure(lambda: client.action("misc:nope")))
    step("query nowhere:list")
    observe("module", failure(lambda: client.query("nowhere:list")))
    step("a good query on the same client afterwards")
    observe("after", client.query("rooms:list"))


@scenario
def app_int_args(url: str, _key: str | None) -> None:
    client = ConvexClient(url)
    room = client.mutation("rooms:create", {"name": "numbers"})
    step("posting 7 messages")
    for i in range(7):
        client.mutation("rooms:post", {"room_id": room, "author": "ada", "body": f"m{i}"})
    step("query rooms:latest count=5 (a Python int, sent as a float)")
    observe("latest_5", bodies(client.query("rooms:latest", {"room_id": room, "count": 5})))
    step("query rooms:latest count=ConvexInt64(2)")
    observe("latest_int64_2", bodies(client.query("rooms:latest", {"room_id": room, "count": ConvexInt64(2)})))
    step("mutation misc:open_account balance=2**40, then misc:total_balance")
    client.mutation("misc:open_account", {"owner": "ada", "balance": 2**40})
    client.mutation("misc:open_account", {"owner": "bob", "balance": 3})
    observe("total_balance", client.query("misc:total_balance"))
    step("query rooms:latest count=2.5 (not integral)")
    observe("fractional_count", failure(lambda: client.query("rooms:latest", {"room_id": room, "count": 2.5})))


@scenario
def app_int64_and_bytes(url: str, _key: str | None) -> None:
    client = ConvexClient(url)
    blob = bytes(range(256)) * 4
    value: dict[str, Any] = {
        "big": ConvexInt64(2**62),
        "max": ConvexInt64(2**63 - 1),
        "min": ConvexInt64(-(2**63)),
        "plain_int": 5,
        "float": 0.25,
        "bytes": blob,
        "empty_bytes": b"",
        "nested": [ConvexInt64(-1), b"\x00\xff"],
    }
    step("query misc:echo with int64s, bytes and numbers")
    echoed = client.query("misc:echo", {"value": value})
    observe("echo", echoed)
    observe("bytes_equal", echoed["bytes"] == blob)
    observe("types", {k: type(v).__name__ for k, v in echoed.items()})
    step("mutation misc:put_kitchen with bytes and an int64 count, then misc:get_doc")
    kitchen: dict[str, Any] = {
        "text": "t", "count": ConvexInt64(7), "ratio": 0.5, "flag": True, "blob": b"\x01\x02\x03",
        "tags": ["a"], "scores": {"x": 1.5}, "address": {"city": "Oslo"}, "status": "active", "maybe": None,
    }
    doc_id = client.mutation("misc:put_kitchen", {"doc": kitchen})
    doc = client.query("misc:get_doc", {"id": doc_id})
    observe("kitchen", {"count": doc["count"], "blob": doc["blob"], "blob_type": type(doc["blob"]).__name__})


@scenario
def app_admin_auth(url: str, key: str | None) -> None:
    assert key is not None, "this scenario needs the admin key"
    user = ConvexClient(url)
    room = user.mutation("rooms:create", {"name": "lobby"})
    user.mutation("rooms:post", {"room_id": room, "author": "ada", "body": "public"})
    step("query rooms:count_all (internal) without admin auth")
    observe("without_admin", failure(lambda: user.query("rooms:count_all")))
    admin = ConvexClient(url)
    admin.set_admin_auth(key)
    step("query rooms:count_all with admin auth")
    observe("count_before", admin.query("rooms:count_all"))
    step("mutation rooms:secret_post with admin auth")
    observe("secret_post", admin.mutation("rooms:secret_post", {"room_id": room, "body": "from admin"}))
    observe("count_after", admin.query("rooms:count_all"))
    step("query rooms:latest as the ordinary user")
    observe("latest", user.query("rooms:latest", {"room_id": room}))


# -- tests/interop/app (queries that fail) ---------------------------------------------------

@scenario
def query_convex_error(url: str, _key: str | None) -> None:
    client = ConvexClient(url)
    step("query errors:refuse (ConvexError with an object)")
    observe("object_data", failure(lambda: client.query("errors:refuse", {"code": "Nope"})))
    step("query errors:refuse_text (ConvexError with a string)")
    observe("string_data", failure(lambda: client.query("errors:refuse_text", {"text": "not today"})))
    step("query errors:crash (an ordinary exception)")
    observe("crash", failure(lambda: client.query("errors:crash")))
    step("subscribe to errors:refuse")
    subscription = client.subscribe("errors:refuse", {"code": "Subscribed"})
    observe("subscription", failure(lambda: next(subscription)))


# -- legacy HTTP client ----------------------------------------------------------------------

@scenario
def legacy_http_client(url: str, key: str | None) -> None:
    from convex.http_client import ConvexHttpClient

    client = ConvexHttpClient(url)
    step("http mutation rooms:create, rooms:post; query rooms:latest")
    room = client.mutation("rooms:create", {"name": "http"})
    client.mutation("rooms:post", {"room_id": room, "author": "ada", "body": "over http"})
    observe("latest", client.query("rooms:latest", {"room_id": room, "count": 5}))
    step("http action misc:double_post")
    observe("action_result", client.action("misc:double_post", {"owner": "http"}))
    step("http mutation rooms:post to a room that does not exist")
    observe("no_such_room", failure(lambda: client.mutation(
        "rooms:post", {"room_id": absent_id_like(room), "author": "ada", "body": "lost"})))
    step("http action misc:fail_action")
    observe("action_error", failure(lambda: client.action("misc:fail_action")))
    step("http mutation with a wrong argument type")
    observe("wrong_type", failure(lambda: client.mutation("rooms:post", {"room_id": room, "author": 3, "body": "x"})))
    step("http query of an unknown function")
    observe("unknown", failure(lambda: client.query("rooms:nope")))
    step("http echo of int64 and bytes")
    value: dict[str, Any] = {"big": ConvexInt64(-(2**40)), "bytes": b"\x00\x10\xff"}
    observe("echo", client.query("misc:echo", {"value": value}))
    step("http internal query without and with admin auth")
    observe("without_admin", failure(lambda: client.query("rooms:count_all")))
    if key is not None:
        client.set_admin_auth(key)
        observe("with_admin", client.query("rooms:count_all"))


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in SCENARIOS:
        sys.stderr.write(f"usage: {sys.argv[0]} SCENARIO URL [ADMIN_KEY]; scenarios: {', '.join(SCENARIOS)}\n")
        return 2
    name, url, key = argv[0], argv[1], (argv[2] if len(argv) > 2 else None)
    step(f"scenario {name} with convex {convex.__version__} against {url}")
    try:
        SCENARIOS[name](url, key)
    except BaseException:  # noqa: BLE001 - reported, then the process exits non-zero
        traceback.print_exc()
        sys.stderr.write(f"observed so far: {json.dumps(observed)}\n")
        return 1
    step("done")
    sys.stdout.write(json.dumps(observed) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # The Rust client's background threads keep retrying; leave without waiting for them.
    os._exit(code)
