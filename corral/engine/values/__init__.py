"""Values: Convex's JSON encoding, document ids, index keys, and the key ranges a query reads and a commit writes."""

from .convex_json import (
    INT64_MAX,
    INT64_MIN,
    MAX_DOCUMENT_BYTES,
    ValueError_,
    check_value,
    decode,
    encode,
    encode_clean,
    ts_from_wire,
    ts_to_wire,
)
from .readsets import KeyRange, ReadSet, WriteSet

__all__ = [
    "INT64_MAX", "INT64_MIN", "MAX_DOCUMENT_BYTES", "KeyRange", "ReadSet", "ValueError_", "WriteSet",
    "check_value", "decode", "encode", "encode_clean", "ts_from_wire", "ts_to_wire",
]
