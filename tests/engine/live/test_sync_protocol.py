"""The WebSocket sync protocol, frame by frame, against a live node."""

from __future__ import annotations

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from ..sync_client import SyncClient, ts_of


def make_room(client: SyncClient, name: str = "r") -> str:
    response = client.mutation("rooms:create", {"name": name})
    assert response["success"], response
    return str(response["result"])


def test_subscription_gets_initial_result_then_updates_after_a_write(live_node):
    watcher, writer = SyncClient(live_node.url), SyncClient(live_node.url)
    room = make_room(writer)
    q = watcher.subscribe("rooms:latest", {"room_id": room})
    watcher.recv_until(lambda m: m["type"] == "Transition" and q in watcher.results)
    assert watcher.results[q] == []
    writer.mutation("rooms:post", {"room_id": room, "author": "ann", "body": "hello"})
    watcher.recv_until(lambda m: m["type"] == "Transition" and watcher.results[q] != [])
    assert [m["body"] for m in watcher.results[q]] == ["hello"]


def test_a_commit_reruns_only_the_subscriptions_it_touches(live_node):
    watcher, writer = SyncClient(live_node.url), SyncClient(live_node.url)
    room_a, room_b = make_room(writer, "a"), make_room(writer, "b")
    qa = watcher.subscribe("rooms:latest", {"room_id": room_a})
    qb = watcher.subscribe("rooms:latest", {"room_id": room_b})
    watcher.recv_until(lambda m: m["type"] == "Transition" and qa in watcher.results and qb in watcher.results)
    writer.mutation("rooms:post", {"room_id": room_a, "author": "x", "body": "to a"})
    update = watcher.recv_until(lambda m: m["type"] == "Transition" and m["modifications"])
    assert [mod["queryId"] for mod in update["modifications"]] == [qa]
    # a write that changes nothing the watcher reads sends it nothing at all
    other = make_room(writer, "c")
    writer.mutation("rooms:post", {"room_id": other, "author": "x", "body": "elsewhere"})
    writer.mutation("rooms:post", {"room_id": room_b, "author": "x", "body": "to b"})
    update = watcher.recv_until(lambda m: m["type"] == "Transition" and m["modifications"])
    assert [mod["queryId"] for mod in update["modifications"]] == [qb]


def test_an_unchanged_result_is_not_resent(live_node):
    watcher, writer = SyncClient(live_node.url), SyncClient(live_node.url)
    room = make_room(writer)
    msg = writer.mutation("rooms:post", {"room_id": room, "author": "a", "body": "b"})["result"]
    q = watcher.subscribe("rooms:by_author", {"room_id": room, "author": "zed"})
    watcher.recv_until(lambda m: m["type"] == "Transition" and q in watcher.results)
    writer.mutation("rooms:like", {"message_id": msg})  # touches the index range the query read, result stays []
    marker = watcher.subscribe("rooms:list")
    update = watcher.recv_until(lambda m: m["type"] == "Transition" and marker in watcher.results)
    assert all(mod["queryId"] != q for mod in update["modifications"])


def test_mutation_response_then_transition_reaching_its_ts(live_node):
    client = SyncClient(live_node.url)
    q = client.subscribe("rooms:list")
    client.recv_until(lambda m: m["type"] == "Transition" and q in client.results)
    client.send({"type": "Mutation", "requestId": 0, "udfPath": "rooms:create", "args": [{"name": "mine"}]})
    response = client.recv_until(lambda m: m["type"] == "MutationResponse")
    assert response["success"] is True and isinstance(response["result"], str) and response["logLines"] == []
    target = ts_of(response["ts"])
    client.recv_until(lambda m: m["type"] == "Transition" and client.version["ts"] >= target)
    assert [r["name"] for r in client.results[q]] == ["mine"]  # read-your-writes


def test_all_subscriptions_of_a_client_advance_to_one_timestamp(live_node):
    client, writer = SyncClient(live_node.url), SyncClient(live_node.url)
    room = make_room(writer)
    q1 = client.subscribe("rooms:list")
    q2 = client.subscribe("rooms:latest", {"room_id": room})
    first = client.recv_until(lambda m: m["type"] == "Transition" and q1 in client.results and q2 in client.results)
    assert first["endVersion"]["querySet"] == 2
    writer.mutation("rooms:create", {"name": "second"})
    writer.mutation("rooms:post", {"room_id": room, "author": "a", "body": "b"})
    client.recv_until(lambda m: m["type"] == "Transition" and len(client.results[q1]) == 2 and client.results[q2] != [])
    # both results are as of the one ts the last Transition reached
    assert client.version["ts"] >= ts_of(writer.mutation("rooms:create", {"name": "third"})["ts"]) - 10**12


def test_failed_mutation_carries_convex_error_data(live_node):
    client = SyncClient(live_node.url)
    response = client.mutation("rooms:post", {"room_id": "k" * 32, "author": "a", "body": "b"})
    assert response["success"] is False and response["ts"] is None
    assert "room_id" in response["result"]
    room = make_room(client)
    other = SyncClient(live_node.url)
    other.mutation("rooms:create", {"name": "x"})
    failed = client.mutation("rooms:post_then_fail", {"room_id": room})
    assert failed["success"] is False and failed["errorData"] == {"code": "Boom"}


def test_query_failure_is_reported_as_query_failed(live_node):
    client = SyncClient(live_node.url)
    q = client.subscribe("rooms:nope")
    bad_args = client.subscribe("rooms:latest", {"room_id": 3})
    client.recv_until(lambda m: m["type"] == "Transition" and q in client.results and bad_args in client.results)
    assert client.results[q][0] == "failed" and "Could not find public function" in client.results[q][1]
    assert client.results[bad_args][0] == "failed" and "room_id" in client.results[bad_args][1]


def test_action_response(live_node):
    client = SyncClient(live_node.url)
    client.send({"type": "Action", "requestId": 7, "udfPath": "misc:double_post", "args": [{"owner": "o"}]})
    response = client.recv_until(lambda m: m["type"] == "ActionResponse")
    assert response["success"] is True and response["logLines"] == []
    assert ts_of(response["result"]["$integer"]) == 2  # an int64, encoded as Convex does
    client.send({"type": "Action", "requestId": 8, "udfPath": "misc:fail_action", "args": [{}]})
    failed = client.recv_until(lambda m: m["type"] == "ActionResponse")
    assert failed["success"] is False and failed["errorData"] == {"why": "because"}


def test_a_resent_mutation_is_applied_once(live_node):
    session = "5c1f8a52-0000-4000-8000-000000000001"
    first = SyncClient(live_node.url, session_id=session)
    room = make_room(first)
    response = first.mutation("rooms:post", {"room_id": room, "author": "a", "body": "once"}, request_id=41)
    first.close()
    again = SyncClient(live_node.url, session_id=session)  # reconnect and re-send, as the JS client does
    replay = again.mutation("rooms:post", {"room_id": room, "author": "a", "body": "once"}, request_id=41)
    assert replay["success"] and replay["result"] == response["result"]
    q = again.subscribe("rooms:latest", {"room_id": room})
    again.recv_until(lambda m: m["type"] == "Transition" and q in again.results)
    assert [m["body"] for m in again.results[q]] == ["once"]


def test_unsubscribe_sends_query_removed(live_node):
    client = SyncClient(live_node.url)
    q = client.subscribe("rooms:list")
    client.recv_until(lambda m: m["type"] == "Transition" and q in client.results)
    client.unsubscribe(q)
    message = client.recv_until(lambda m: m["type"] == "Transition")
    assert message["modifications"] == [{"type": "QueryRemoved", "queryId": q}]


def test_ping_is_sent_when_idle(live_node_factory):
    node = live_node_factory(env={"CORRAL_PING_INTERVAL": "0.2"})
    client = SyncClient(node.url)
    assert client.recv_until(lambda m: m["type"] == "Ping", timeout=30) == {"type": "Ping"}


def test_admin_authenticate_lets_the_socket_call_internal_functions(live_node):
    client = SyncClient(live_node.url)
    client.send({"type": "Authenticate", "tokenType": "Admin", "value": live_node.admin_key, "baseVersion": 0})
    client.recv_until(lambda m: m["type"] == "Transition" and m["endVersion"]["identity"] == 1)
    q = client.subscribe("rooms:count_all")
    client.recv_until(lambda m: m["type"] == "Transition" and q in client.results)
    assert client.results[q] == {"$integer": "AAAAAAAAAAA="}


def test_a_wrong_admin_key_gets_auth_error(live_node):
    client = SyncClient(live_node.url)
    client.send({"type": "Authenticate", "tokenType": "Admin", "value": "nope", "baseVersion": 0})
    error = client.recv_until(lambda m: m["type"] == "AuthError")
    assert "admin key" in error["error"] and error["baseVersion"] == 0


def test_a_user_token_without_an_identity_provider_gets_auth_error(live_node):
    client = SyncClient(live_node.url)
    client.send({"type": "Authenticate", "tokenType": "User", "value": "e30.e30.sig", "baseVersion": 0})
    error = client.recv_until(lambda m: m["type"] == "AuthError")
    assert error["error"]


BAD_FRAMES = [
    ("not json at all", "not JSON"),
    ('["a", "list"]', "JSON object"),
    ('{"no": "type"}', "JSON object with a 'type'"),
    ('{"type": "Teleport"}', "unknown message type"),
    ('{"type": "ModifyQuerySet", "baseVersion": 5, "newVersion": 6, "modifications": []}', "BaseVersionMismatch"),
    ('{"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 0, "modifications": []}', "greater than"),
    ('{"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [{"type": "Remove", "queryId": 9}]}', "not in the query set"),
    ('{"type": "Mutation", "requestId": "x", "udfPath": "rooms:create", "args": [{}]}', "requestId"),
    ('{"type": "Mutation", "requestId": 1, "udfPath": "rooms:create", "args": [{"$bad": 1}]}', "reserved"),
    ('{"type": "Authenticate", "tokenType": "Admin", "value": "k", "baseVersion": 3}', "does not chain"),
]


@pytest.mark.parametrize(("frame", "expected"), BAD_FRAMES)
def test_a_bad_frame_gets_a_fatal_error_and_nothing_is_written(live_node, frame, expected):
    bystander = SyncClient(live_node.url)
    q = bystander.subscribe("rooms:list")
    bystander.recv_until(lambda m: m["type"] == "Transition" and q in bystander.results)
    client = SyncClient(live_node.url)
    client.ws.send(frame)
    fatal = client.recv_until(lambda m: m["type"] == "FatalError")
    assert expected in fatal["error"]
    with pytest.raises(ConnectionClosed):
        client.recv(timeout=30)
    # the node serves everyone else, and nothing was written
    assert bystander.results[q] == []
    response = bystander.mutation("rooms:create", {"name": "after"})
    assert response["success"]
    assert [r["name"] for r in bystander.results[q]] == ["after"]


def test_transition_frames_are_plain_json_text(live_node):
    client = SyncClient(live_node.url)
    client.subscribe("rooms:list")
    raw = client.ws.recv(timeout=10)
    assert isinstance(raw, str)
    assert orjson.loads(raw)["type"] == "Transition"


def test_a_failed_query_runs_again_when_what_it_read_changes(live_node):
    """A refusal is not forever: the subscription waits on what the query read before it failed."""
    admin = {"Authorization": f"Convex {live_node.admin_key}"}
    token = httpx.post(live_node.url + "/api/auth/tokens", json={"subject": "ada"}, headers=admin, timeout=30).json()["token"]
    client = SyncClient(live_node.url)
    client.send({"type": "Authenticate", "tokenType": "User", "value": token, "baseVersion": 0})
    me = client.subscribe("corral/operator:me")
    refused = client.subscribe("corral/operator:runners")
    client.recv_until(lambda m: m["type"] == "Transition" and me in client.results and refused in client.results)
    assert client.results[refused][0] == "failed" and "only the node's operators" in client.results[refused][2]["message"]
    granted = httpx.post(live_node.url + "/api/mutation", json={"path": "corral/operator:grant",
                                                                 "args": {"user_id": client.results[me]["user_id"]}},
                         headers=admin, timeout=30)
    assert granted.json()["status"] == "success", granted.text
    client.recv_until(lambda m: m["type"] == "Transition" and isinstance(client.results[refused], list))
    assert client.results[me]["operator"] is True
