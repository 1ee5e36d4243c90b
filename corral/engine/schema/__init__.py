"""Types said once: tables and indexes declared as classes, and the validators compiled from annotations."""

from .tables import SYSTEM_INDEXES, Schema, Table, TableDef, index, tables_in_module
from .validators import Check, Id, ObjectShape, ValidationFailure, compile_type

__all__ = [
    "SYSTEM_INDEXES", "Check", "Id", "ObjectShape", "Schema", "Table", "TableDef", "ValidationFailure",
    "compile_type", "index", "tables_in_module",
]
