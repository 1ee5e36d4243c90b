"""Document ids: 32 lowercase base32 characters naming their table and the document.

The first 4 bytes are a tag derived from the table name, so an id says which table it
belongs to without a lookup and `Id[Table]` can be checked at the boundary.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os

ID_LENGTH = 32


@functools.lru_cache(maxsize=4096)
def table_tag(table: str) -> bytes:
    return hashlib.sha256(table.encode("utf-8")).digest()[:4]


def new_id(table: str) -> str:
    raw = table_tag(table) + os.urandom(16)
    return base64.b32encode(raw).decode("ascii").lower()


def tag_of(doc_id: object) -> bytes | None:
    """The table tag of a well-formed id, or None."""
    if not isinstance(doc_id, str) or len(doc_id) != ID_LENGTH:
        return None
    try:
        return base64.b32decode(doc_id[:8].upper())[:4]  # 8 characters hold the 4-byte tag
    except Exception:
        return None


def is_id_of(doc_id: object, table: str) -> bool:
    return tag_of(doc_id) == table_tag(table)
