"""Tables and indexes, declared as Python classes.

    class Message(Table, name="messages"):
        room: str
        body: str
        indexes = [index("by_room", "room")]

A document is a `dict` (a `Table` instance is one, with attribute access) carrying the
system fields `_id` and `_creationTime`. Every table also has the built-in indexes
`by_id` and `by_creation_time`.
"""

from __future__ import annotations

import copy
import hashlib
import re
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, NotRequired, Required, get_args, get_origin

from ..errors import SchemaError
from ..values import ids
from .validators import Check, ObjectShape, compile_type

NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]{0,63}$")
SYSTEM_INDEXES = ("by_id", "by_creation_time")


@dataclass(frozen=True)
class Index:
    name: str
    fields: tuple[str, ...]


def index(name: str, *fields: str) -> Index:
    """Declare an index on one field or several (a compound index, in that order)."""
    if not fields:
        raise SchemaError(f"index '{name}' names no field")
    return Index(name, tuple(fields))


class Table(dict):  # type: ignore[type-arg]
    """Base of table declarations. Instances are the documents themselves."""

    __table_name__: ClassVar[str]
    __table_fields__: ClassVar[dict[str, tuple[Any, bool]]]
    __table_indexes__: ClassVar[tuple[Index, ...]]
    __table_check__: ClassVar[Check | None] = None
    __table_defaults__: ClassVar[dict[str, Any]] = {}
    indexes: ClassVar[list[Index]] = []

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__table_name__ = name or _snake_plural(cls.__name__)
        cls.__table_indexes__ = tuple(cls.__dict__.get("indexes", ()))
        cls.__table_fields__ = {}
        cls.__table_check__ = None
        # A class-level default makes a field optional; it must not shadow the document's value.
        annotated = cls.__dict__.get("__annotations__", {})
        own = {k: v for k, v in cls.__dict__.items() if k in annotated and k != "indexes"}
        for key in own:
            delattr(cls, key)
        cls.__table_defaults__ = {**getattr(cls, "__table_defaults__", {}), **own}

    def __init__(self, data: dict[str, Any] | None = None, /, **fields: Any) -> None:
        super().__init__(data or {}, **fields)
        for key, default in self.__table_defaults__.items():
            if key not in self:
                self[key] = copy.copy(default)

    def __getattr__(self, item: str) -> Any:
        try:
            return self[item]
        except KeyError:
            if item in type(self)._fields():
                return None
            raise AttributeError(f"{type(self).__name__} has no field {item!r}") from None

    @classmethod
    def _fields(cls) -> dict[str, tuple[Any, bool]]:
        if not cls.__table_fields__:
            hints: dict[str, Any] = {}
            for klass in reversed(cls.__mro__):
                if not (isinstance(klass, type) and issubclass(klass, Table)) or klass is Table:
                    continue
                module = sys.modules.get(klass.__module__)
                own = {k: v for k, v in klass.__dict__.get("__annotations__", {}).items()}
                holder = type("_Fields", (), {"__annotations__": own, "__module__": klass.__module__})
                hints.update(typing.get_type_hints(holder, globalns=vars(module) if module else None,
                                                   localns=dict(vars(klass)), include_extras=True))
            fields: dict[str, tuple[Any, bool]] = {}
            for fname, hint in hints.items():
                if get_origin(hint) is ClassVar or fname.startswith("__") or fname == "indexes":
                    continue
                required = True
                origin = get_origin(hint)
                if origin is NotRequired:
                    hint, required = get_args(hint)[0], False
                elif origin is Required:
                    hint = get_args(hint)[0]
                elif fname in cls.__table_defaults__:  # a class-level default makes the field optional
                    required = False
                fields[fname] = (hint, required)
            cls.__table_fields__ = fields
        return cls.__table_fields__

    @classmethod
    def __table_validator__(cls) -> Check:
        if cls.__table_check__ is None:
            shape = {n: (compile_type(h), req) for n, (h, req) in cls._fields().items()}
            cls.__table_check__ = ObjectShape(shape, allow_system=True, factory=cls, defaults=cls.__table_defaults__)
        return cls.__table_check__


def _snake_plural(name: str) -> str:
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
    return snake if snake.endswith("s") else snake + "s"


@dataclass
class TableDef:
    name: str
    cls: type[Table] | None
    indexes: dict[str, tuple[str, ...]]
    module: str
    check: Check | None = None
    tag: bytes = b""
    fingerprint: str = ""
    field_names: tuple[str, ...] = field(default_factory=tuple)

    def validate(self, document: dict[str, Any]) -> dict[str, Any]:
        if self.check is None:
            return dict(document)
        return dict(self.check(document, ""))

    def wrap(self, document: dict[str, Any]) -> dict[str, Any]:
        return self.cls(document) if self.cls is not None else document


class Schema:
    """Every table served by a node: Corral's own and those of a `--functions` folder."""

    def __init__(self) -> None:
        self.tables: dict[str, TableDef] = {}
        self._by_tag: dict[bytes, TableDef] = {}

    def add_table(self, cls: type[Table], *, module: str, system: bool = False) -> TableDef:
        """Add a table; `system` tables (Corral's own, such as `_scheduled_functions`) start with '_'."""
        name = cls.__table_name__
        if system and name.startswith("_") and NAME_RE.match(name[1:]):
            pass
        elif not NAME_RE.match(name) or name.startswith("_"):
            raise SchemaError(f"table name {name!r} (in {module}) must start with a letter and hold only letters, digits and '_'")
        if name in self.tables:
            other = self.tables[name]
            raise SchemaError(f"table '{name}' declared in {module} collides with the table of the same name in {other.module}")
        fields = cls._fields()
        indexes: dict[str, tuple[str, ...]] = {}
        for idx in cls.__table_indexes__:
            if idx.name in indexes or idx.name in SYSTEM_INDEXES:
                raise SchemaError(f"index '{idx.name}' on table '{name}' is declared twice or shadows a built-in index")
            if not NAME_RE.match(idx.name):
                raise SchemaError(f"index name {idx.name!r} on table '{name}' must hold only letters, digits and '_'")
            for fname in idx.fields:
                if fname.split(".")[0] not in fields and fname not in ("_creationTime",):
                    raise SchemaError(f"index '{idx.name}' on table '{name}' names field '{fname}', which the table does not declare")
            indexes[idx.name] = idx.fields
        try:
            check = cls.__table_validator__()
        except TypeError as exc:
            raise SchemaError(f"table '{name}' in {module}: {exc}") from exc
        tdef = TableDef(name=name, cls=cls, indexes=indexes, module=module, check=check,
                        tag=ids.table_tag(name), field_names=tuple(fields))
        tdef.fingerprint = _fingerprint(fields)
        if tdef.tag in self._by_tag:
            raise SchemaError(f"tables '{name}' and '{self._by_tag[tdef.tag].name}' have colliding id tags; rename one")
        self.tables[name] = tdef
        self._by_tag[tdef.tag] = tdef
        return tdef

    def table(self, name: str) -> TableDef:
        try:
            return self.tables[name]
        except KeyError:
            raise KeyError(name) from None

    def table_of_id(self, doc_id: object) -> TableDef | None:
        tag = ids.tag_of(doc_id)
        return self._by_tag.get(tag) if tag is not None else None


def _fingerprint(fields: dict[str, tuple[Any, bool]]) -> str:
    text = ";".join(f"{n}:{h!r}:{r}" for n, (h, r) in sorted(fields.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tables_in_module(module: Any) -> list[type[Table]]:
    """Table subclasses defined in a schema module, in declaration order."""
    found = []
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, Table) and value is not Table and value.__module__ == module.__name__:
            found.append(value)
    return found
