"""Two Corral nodes — two OS processes — on one PostgreSQL."""

from __future__ import annotations

import threading

from ..sync_client import SyncClient


def test_a_subscriber_on_node_a_sees_a_mutation_made_on_node_b(live_node_factory, postgres_url):
    node_a = live_node_factory(database_url=postgres_url)
    node_b = live_node_factory(database_url=postgres_url)
    watcher = SyncClient(node_a.url)
    q = watcher.subscribe("rooms:list")
    watcher.recv_until(lambda m: m["type"] == "Transition" and q in watcher.results)
    assert watcher.results[q] == []
    writer = SyncClient(node_b.url)
    assert writer.mutation("rooms:create", {"name": "made on B"})["success"]
    watcher.recv_until(lambda m: m["type"] == "Transition" and watcher.results[q] != [], timeout=30)
    assert [r["name"] for r in watcher.results[q]] == ["made on B"]


def test_concurrent_writers_on_two_nodes_no_subscriber_misses_a_write(live_node_factory, postgres_url):
    nodes = [live_node_factory(database_url=postgres_url) for _ in range(2)]
    watchers = []
    for node in nodes:
        watcher = SyncClient(node.url)
        q = watcher.subscribe("misc:account_count")
        watcher.recv_until(lambda m, w=watcher, q=q: m["type"] == "Transition" and q in w.results)
        watchers.append((watcher, q))

    per_writer, writers_per_node = 25, 2
    errors: list[str] = []

    def write(url: str, tag: str) -> None:
        client = SyncClient(url)
        for i in range(per_writer):
            response = client.mutation("misc:open_account", {"owner": f"{tag}-{i}", "balance": 1})
            if not response["success"]:
                errors.append(response["result"])
        client.close()

    threads = [threading.Thread(target=write, args=(node.url, f"n{n}w{w}")) for n, node in enumerate(nodes) for w in range(writers_per_node)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    total = per_writer * writers_per_node * len(nodes)
    for watcher, q in watchers:
        seen: list[float] = []

        def reached(message, w=watcher, q=q, seen=seen) -> bool:  # type: ignore[no-untyped-def]
            if message["type"] == "Transition" and q in w.results:
                value = w.results[q]
                count = value if isinstance(value, float) else None
                if isinstance(value, dict):
                    import base64

                    count = int.from_bytes(base64.b64decode(value["$integer"]), "little", signed=True)
                seen.append(count)  # type: ignore[arg-type]
                return count == total
            return False

        if not reached({"type": "Transition"}):
            watcher.recv_until(reached, timeout=30)
        assert seen == sorted(seen), "a subscriber saw its count go backwards"
