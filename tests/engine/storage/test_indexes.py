"""Declared indexes are real SQL indexes: the database's own EXPLAIN shows them used."""

from __future__ import annotations

import asyncio

from corral.engine.auth import Caller
from corral.engine.storage.base import key_column
from corral.engine.values import index_keys as keys


def plan(node, room_id: str) -> str:  # type: ignore[no-untyped-def]
    store = node.engine.store
    prefix = keys.encode_component(room_id)
    sql = store.dialect.sql("scan", "messages", key_column("by_room"), "DESC", "1", "1", "1")
    params = (prefix, keys.successor(prefix), 20)
    with store.snapshot() as (conn, _ts):
        if store.dialect_name == "sqlite":
            rows = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
            return "\n".join(str(r[-1]) for r in rows)
        rows = conn.execute("EXPLAIN " + sql, params).fetchall()
        return "\n".join(r[0] for r in rows)


def test_an_indexed_query_uses_its_index(make_node, database_url):
    node = make_node(database_url)
    rooms = asyncio.run(node.engine.call("mutation", "rooms:seed", {"rooms": 50, "per_room": 40}, Caller.anonymous()))[0]
    if node.engine.store.dialect_name == "postgresql":
        with node.engine.store.snapshot() as (conn, _ts):
            conn.raw.rollback()
            conn.raw.autocommit = True
            conn.execute("ANALYZE t_messages")
            conn.raw.autocommit = False
    text = plan(node, rooms[7])
    assert "ix_messages__by_room" in text, text
    assert "SCAN t_messages" not in text and "Seq Scan" not in text, text
    latest = asyncio.run(node.engine.call("query", "rooms:latest", {"room_id": rooms[7], "count": 5}, Caller.anonymous()))[0]
    assert [m["body"] for m in latest] == ["35", "36", "37", "38", "39"]


def test_index_keys_sort_like_convex_values():
    ordered = [keys.MISSING, None, -(2**63), -1, 0, 2**62, float("-inf"), -1.5, 0.0, 2.5, float("inf"), False, True,
               "", "a", "a\x00", "ab", "b", b"", b"\x00", b"\x01", [], [None], [1], ["a"], {}, {"a": 1}]
    encoded = [keys.encode_component(v) for v in ordered]
    assert encoded == sorted(encoded)


def test_prefix_successor_bounds_every_extension():
    prefix = keys.encode_component("room")
    upper = keys.successor(prefix)
    assert upper is not None
    for tail in ("", "\x00", "\xff", "zzzz"):
        key = prefix + keys.encode_component(tail)
        assert prefix <= key < upper
    assert keys.successor(b"\xff\xff") is None
