"""What a query read and what a commit wrote, and whether the two meet.

Both are expressed in index-key space: a read is a half-open byte range of one index of one
table, a write is the old and new key of a document in each index of its table.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class KeyRange:
    table: str
    index: str
    lo: bytes
    hi: bytes | None  # exclusive; None = unbounded

    def contains(self, key: bytes) -> bool:
        return key >= self.lo and (self.hi is None or key < self.hi)


@dataclass(slots=True)
class ReadSet:
    ranges: list[KeyRange] = field(default_factory=list)

    def add(self, table: str, index: str, lo: bytes, hi: bytes | None) -> None:
        self.ranges.append(KeyRange(table, index, lo, hi))

    def by_table(self) -> dict[str, list[KeyRange]]:
        grouped: dict[str, list[KeyRange]] = {}
        for rng in self.ranges:
            grouped.setdefault(rng.table, []).append(rng)
        return grouped


@dataclass(slots=True)
class WriteSet:
    """Keys touched by one commit, grouped by table then index."""

    keys: dict[str, dict[str, list[bytes]]] = field(default_factory=dict)

    def add(self, table: str, index: str, key: bytes) -> None:
        self.keys.setdefault(table, {}).setdefault(index, []).append(key)

    def merge(self, other: WriteSet) -> None:
        for table, indexes in other.keys.items():
            mine = self.keys.setdefault(table, {})
            for index, keys in indexes.items():
                mine.setdefault(index, []).extend(keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def intersects(self, ranges: Iterable[KeyRange]) -> bool:
        keys = self.keys
        for rng in ranges:
            tables = keys.get(rng.table)
            if not tables:
                continue
            written = tables.get(rng.index)
            if not written:
                continue
            for key in written:
                if rng.contains(key):
                    return True
        return False

    def to_wire(self) -> list[list[str]]:
        return [[t, i, k.hex()] for t, idx in self.keys.items() for i, ks in idx.items() for k in ks]

    @classmethod
    def from_wire(cls, rows: list[list[str]]) -> WriteSet:
        ws = cls()
        for table, index, key in rows:
            ws.add(table, index, bytes.fromhex(key))
        return ws
