"""Corral's own `sandboxes:*` and `runners:*` functions, called as the engine's clients call them:
only runner keys may act as runners, records are private to their owner, the lifecycle sweeps
follow the clock, and `corral/sandboxes:list` is a live query. SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from corral.engine.auth import Caller, MachineKey, UserIdentity
from corral.engine.errors import FunctionError

from ..engine.sync_client import SyncClient

ADMIN = Caller.admin()
RUNNER = Caller.api_key(MachineKey(id="k-runner", name="builder-1", kind="runner"))
OTHER_RUNNER = Caller.api_key(MachineKey(id="k-other", name="builder-2", kind="runner"))
CLIENT = Caller.api_key(MachineKey(id="k-client", name="sdk", kind="client"))


def _user(subject: str) -> Caller:
    identity = UserIdentity(tokenIdentifier=f"https://issuer|{subject}", subject=subject, issuer="https://issuer")
    return Caller.user(identity)


def call(node: Any, kind: str, path: str, args: dict[str, Any], caller: Caller = ADMIN) -> Any:
    import asyncio

    value, _ts = asyncio.run(node.engine.call(kind, path, args, caller))
    return value


def internal(node: Any, kind: str, path: str, args: dict[str, Any]) -> Any:
    import asyncio

    runner = node.engine.call_query if kind == "query" else node.engine.call_mutation
    return asyncio.run(runner(path, args, ADMIN, internal_ok=True))


def register(node: Any, name: str = "builder-1", caller: Caller = RUNNER, **extra: Any) -> Any:
    args = {"name": name, "url": "http://10.0.0.2:3211", "secret": "s" * 32, "capacity": 4, "labels": ["gpu"], **extra}
    return call(node, "mutation", "corral/runners:register", args, caller)


def record(node: Any, sandbox_id: str, owner: str = "api-key|k-client", runner: str = "builder-1", **extra: Any) -> Any:
    now = node.clock.now_ms()
    args = {"sandbox_id": sandbox_id, "owner": owner, "template": "base", "runner": runner, "end_at": now + 300_000,
            "timeout": 300_000.0, "on_timeout": "kill", "auto_resume": False, "metadata": {}, "access_token": "tok",
            "limits": {"cpu_count": 1, "memory_mb": 256, "disk_mb": 512, "pids": 64}, "allow_internet": False,
            "started_at": now, **extra}
    return internal(node, "mutation", "corral/sandboxes:record", args)


@pytest.fixture
def node(make_node, database_url):  # type: ignore[no-untyped-def]
    return make_node(database_url=database_url, functions=None)


@pytest.mark.parametrize("caller", [CLIENT, _user("ada"), Caller.anonymous()], ids=["client key", "user", "anonymous"])
def test_only_a_runner_key_may_register_a_runner(node, caller):
    with pytest.raises(FunctionError) as err:
        register(node, caller=caller)
    assert "only a runner may call this" in str(getattr(err.value, "data", err.value))
    assert internal(node, "query", "corral/runners:get", {"name": "builder-1"}) is None


def test_a_runner_key_may_call_nothing_else(node):
    with pytest.raises(FunctionError, match="may only register a runner"):
        call(node, "query", "corral/sandboxes:list", {}, RUNNER)


def test_a_runner_name_belongs_to_the_key_that_registered_it(node):
    register(node)
    with pytest.raises(FunctionError) as err:
        register(node, caller=OTHER_RUNNER)
    assert "another runner key" in str(err.value.data)  # type: ignore[attr-defined]
    with pytest.raises(FunctionError):
        call(node, "mutation", "corral/runners:heartbeat", {"name": "builder-1"}, OTHER_RUNNER)
    with pytest.raises(FunctionError):
        call(node, "mutation", "corral/runners:leave", {"name": "builder-1"}, OTHER_RUNNER)
    with pytest.raises(FunctionError) as err:
        call(node, "mutation", "corral/runners:leave", {"name": "nobody"}, RUNNER)
    assert err.value.data["code"] == "RunnerNotRegistered"  # type: ignore[attr-defined]
    listed = internal(node, "query", "corral/runners:list_all", {})
    assert listed[0]["state"] == "up"
    assert [r["name"] for r in listed] == ["builder-1"] and "secret" not in listed[0]


def test_the_work_list_holds_the_runners_live_sandboxes(node):
    register(node)
    record(node, "sb1")
    record(node, "sb2")
    assert call(node, "query", "corral/runners:work", {"name": "builder-1"}, RUNNER) == [
        {"sandbox_id": "sb1", "state": "running", "generation": 1},
        {"sandbox_id": "sb2", "state": "running", "generation": 1}]
    internal(node, "mutation", "corral/sandboxes:transition", {"sandbox_id": "sb1", "to": "killed"})
    work = call(node, "query", "corral/runners:work", {"name": "builder-1"}, RUNNER)
    assert {"sandbox_id": "sb1", "state": "killed", "generation": 2} in work
    call(node, "mutation", "corral/runners:confirm", {"name": "builder-1", "sandbox_id": "sb1", "generation": 2}, RUNNER)
    assert [w["sandbox_id"] for w in call(node, "query", "corral/runners:work", {"name": "builder-1"}, RUNNER)] == ["sb2"]


def test_a_runner_that_leaves_is_stopped_and_its_sandboxes_lost_until_it_registers_again(node):
    register(node)
    record(node, "sb1")
    record(node, "asleep")
    internal(node, "mutation", "corral/sandboxes:transition", {"sandbox_id": "asleep", "to": "paused"})
    paused_at = internal(node, "query", "corral/sandboxes:lookup", {"sandbox_id": "asleep"})["paused_at"]
    node.clock.advance(3600)
    call(node, "mutation", "corral/runners:leave", {"name": "builder-1"}, RUNNER)
    assert internal(node, "query", "corral/runners:get", {"name": "builder-1"})["state"] == "stopped"
    assert internal(node, "query", "corral/sandboxes:lookup", {"sandbox_id": "sb1"})["state"] == "lost"
    late = call(node, "mutation", "corral/runners:heartbeat", {"name": "builder-1"}, RUNNER)  # sent before it left
    assert late["register"] is True  # a stopped runner is up again only by registering
    assert internal(node, "query", "corral/runners:get", {"name": "builder-1"})["state"] == "stopped"
    register(node)
    call(node, "mutation", "corral/runners:reconcile", {"name": "builder-1", "held": [
        {"sandbox_id": "sb1", "state": "running", "memory_kept": True},
        {"sandbox_id": "asleep", "state": "paused", "memory_kept": True}]}, RUNNER)
    assert internal(node, "query", "corral/runners:get", {"name": "builder-1"})["state"] == "up"
    back = internal(node, "query", "corral/sandboxes:lookup", {"sandbox_id": "asleep"})
    assert back["state"] == "paused" and back["paused_at"] == back["state_since"] == paused_at  # retention counts on
    assert internal(node, "query", "corral/sandboxes:lookup", {"sandbox_id": "sb1"})["state"] == "running"


def test_reconcile_restores_lost_sandboxes_kills_unknown_ones_and_ends_missing_ones(node):
    register(node)
    for sandbox_id in ("held", "missing", "paused-one"):
        record(node, sandbox_id)
    record(node, "elsewhere", runner="builder-2")
    node.clock.advance(31)
    assert internal(node, "mutation", "corral/runners:expire_leases", {}) == 1
    assert internal(node, "query", "corral/runners:get", {"name": "builder-1"})["state"] == "lost"
    assert internal(node, "query", "corral/sandboxes:lookup", {"sandbox_id": "held"})["state"] == "lost"
    assert call(node, "mutation", "corral/runners:heartbeat", {"name": "builder-1"}, RUNNER)["reconcile"] is True
    held = [{"sandbox_id": "held", "state": "running", "memory_kept": True},
            {"sandbox_id": "paused-one", "state": "paused", "memory_kept": False},
            {"sandbox_id": "stray", "state": "running", "memory_kept": True},
            {"sandbox_id": "elsewhere", "state": "running", "memory_kept": True}]
    kill = call(node, "mutation", "corral/runners:reconcile", {"name": "builder-1", "held": held}, RUNNER)
    assert sorted(kill) == ["elsewhere", "stray"]
    docs = {s: internal(node, "query", "corral/sandboxes:lookup", {"sandbox_id": s}) for s in ("held", "missing", "paused-one")}
    assert docs["held"]["state"] == "running"
    assert docs["paused-one"]["state"] == "paused" and docs["paused-one"]["memory_kept"] is False
    assert docs["missing"]["state"] == "killed" and docs["missing"]["live"] is False


def test_the_lifecycle_sweeps_follow_the_policy_and_the_clock(node):
    internal(node, "mutation", "corral/sandboxes:configure", {"idle_timeout": 60_000.0, "retention": 3_600_000.0, "runner_lease": 30_000.0})
    register(node)
    now = node.clock.now_ms()
    record(node, "expires", end_at=now + 10_000)
    record(node, "pauses", end_at=now + 10_000, on_timeout="pause")
    record(node, "idles", end_at=now + 86_400_000)
    node.clock.advance(11)
    assert internal(node, "mutation", "corral/sandboxes:expire", {}) == 2
    assert internal(node, "query", "corral/sandboxes:lookup", {"sandbox_id": "expires"})["state"] == "killed"
    assert internal(node, "query", "corral/sandboxes:lookup", {"sandbox_id": "pauses"})["paused_reason"] == "timeout"
    assert internal(node, "mutation", "corral/sandboxes:pause_idle", {}) == 0
    node.clock.advance(50)
    assert internal(node, "mutation", "corral/sandboxes:pause_idle", {}) == 1
    assert internal(node, "query", "corral/sandboxes:lookup", {"sandbox_id": "idles"})["paused_reason"] == "idle"
    node.clock.advance(3601)
    internal(node, "mutation", "corral/sandboxes:clean_retained", {})
    states = {s: internal(node, "query", "corral/sandboxes:lookup", {"sandbox_id": s}) for s in ("expires", "pauses", "idles")}
    assert states["expires"] is None  # killed long enough ago: forgotten
    assert states["pauses"]["state"] == "killed" and states["idles"]["state"] == "killed"


def test_a_sandbox_is_private_to_its_owner(node):
    record(node, "mine", owner="api-key|k-client")
    assert [s["sandbox_id"] for s in call(node, "query", "corral/sandboxes:list", {}, CLIENT)] == ["mine"]
    listed = call(node, "query", "corral/sandboxes:list", {"states": ["running", "running", "paused"]}, CLIENT)
    assert [s["sandbox_id"] for s in listed] == ["mine"]  # a state named twice lists once
    assert "access_token" not in call(node, "query", "corral/sandboxes:get", {"sandbox_id": "mine"}, CLIENT)
    stranger = _user("eve")
    assert call(node, "query", "corral/sandboxes:list", {}, stranger) == []
    assert call(node, "query", "corral/sandboxes:get", {"sandbox_id": "mine"}, stranger) is None
    with pytest.raises(FunctionError):
        call(node, "mutation", "corral/sandboxes:touch", {"sandbox_id": "mine"}, stranger)
    node.clock.advance(5)
    before = node.clock.now_ms()  # the clock runs in real time between the reads: bracket, not approx
    call(node, "mutation", "corral/sandboxes:touch", {"sandbox_id": "mine"}, CLIENT)
    assert before <= internal(node, "query", "corral/sandboxes:lookup", {"sandbox_id": "mine"})["last_activity"] <= node.clock.now_ms()


def test_sandboxes_list_is_a_live_query(short_dir, database_url):
    from ..engine.served import served
    from ..runner.harness import api_key, create, fleet_of, on_loop

    with served(short_dir / "data", database_url=database_url, sandbox_provider="host") as node:
        key, key_id = api_key(node, "watcher", "client")
        client = SyncClient(node.url)
        try:
            client.send({"type": "Authenticate", "tokenType": "User", "value": key, "baseVersion": 0})
            client.identity = 1
            query = client.subscribe("corral/sandboxes:list")
            client.recv_until(lambda m: m["type"] == "Transition" and client.results.get(query) == [])
            made = create(node, owner=f"api-key|{key_id}", metadata={"x": "1"})
            client.recv_until(lambda m: m["type"] == "Transition" and len(client.results.get(query) or []) == 1)
            [listed] = client.results[query]
            assert listed["sandbox_id"] == made.sandbox_id and listed["state"] == "running" and "access_token" not in listed
            on_loop(node, fleet_of(node).pause(f"api-key|{key_id}", made.sandbox_id))
            client.recv_until(lambda m: m["type"] == "Transition" and client.results[query][0]["state"] == "paused")
        finally:
            client.close()
