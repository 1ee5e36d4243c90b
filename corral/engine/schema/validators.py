"""Validators compiled once from Python type annotations.

The annotations on a function's parameters, its return type and a table's fields are the
only declaration of their shape: this module turns them into fast checking functions that
convert wire values (an integral float for an `int`) and name the field that is wrong.
"""

from __future__ import annotations

import copy
import math
import operator
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, NotRequired, Required, Union, get_args, get_origin

import annotated_types as at

from ..values import INT64_MAX, INT64_MIN, ids

Check = Callable[[Any, str], Any]


class ValidationFailure(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.detail = message


def describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class IdMarker:
    """What `Id[Table]` evaluates to: an id of the named table."""

    def __init__(self, table: str) -> None:
        self.table = table

    def __repr__(self) -> str:
        return f"Id[{self.table!r}]"


TableT = typing.TypeVar("TableT")


class Id(str, typing.Generic[TableT]):
    """The id of a document in a table: `Id[Messages]` or `Id["messages"]`."""

    def __class_getitem__(cls, table: Any) -> Any:
        if isinstance(table, str):
            return IdMarker(table)
        name = getattr(table, "__table_name__", None)
        if name is None:
            if isinstance(table, typing.ForwardRef):
                return IdMarker(table.__forward_arg__)
            raise TypeError(f"Id[...] takes a Table class or a table name, not {table!r}")
        return IdMarker(name)


def _check_any(value: Any, path: str) -> Any:
    return value


def _check_str(value: Any, path: str) -> Any:
    if isinstance(value, str):
        return value
    raise ValidationFailure(path, f"expected string, got {describe(value)}")


def _check_bool(value: Any, path: str) -> Any:
    if isinstance(value, bool):
        return value
    raise ValidationFailure(path, f"expected boolean, got {describe(value)}")


def _check_int(value: Any, path: str) -> Any:
    if isinstance(value, bool):
        raise ValidationFailure(path, "expected integer, got boolean")
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return value
        raise ValidationFailure(path, "integer does not fit in int64")
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and INT64_MIN <= value <= INT64_MAX:
        return int(value)
    raise ValidationFailure(path, f"expected integer, got {describe(value)}")


def _check_float(value: Any, path: str) -> Any:
    if isinstance(value, float):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise ValidationFailure(path, f"expected number, got {describe(value)}")


def _check_bytes(value: Any, path: str) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise ValidationFailure(path, f"expected bytes, got {describe(value)}")


def _check_none(value: Any, path: str) -> Any:
    if value is None:
        return None
    raise ValidationFailure(path, f"expected null, got {describe(value)}")


class ObjectShape:
    """Fields of an object validator: name → (check, required)."""

    def __init__(self, fields: dict[str, tuple[Check, bool]], *, allow_system: bool = False,
                 factory: Callable[[dict[str, Any]], Any] | None = None, defaults: dict[str, Any] | None = None) -> None:
        self.fields = fields
        self.allow_system = allow_system
        self.factory = factory
        self.defaults = defaults or {}

    def __call__(self, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise ValidationFailure(path, f"expected object, got {describe(value)}")
        out: dict[str, Any] = {}
        fields = self.fields
        for key, inner in value.items():
            spec = fields.get(key)
            if spec is None:
                if self.allow_system and key in ("_id", "_creationTime"):
                    out[key] = inner
                    continue
                raise ValidationFailure(_join(path, key), "unexpected field; it is not declared")
            out[key] = spec[0](inner, _join(path, key))
        for key, (_check, required) in fields.items():
            if key not in value:
                if key in self.defaults:
                    out[key] = copy.copy(self.defaults[key])
                elif required:
                    raise ValidationFailure(_join(path, key), "missing required field")
        return self.factory(out) if self.factory else out


def compile_type(tp: Any, *, owner: Any = None) -> Check:
    """Turn an annotation into a check function."""
    if tp is Any or tp is object or tp is inspect_empty:
        return _check_any
    if tp is str:
        return _check_str
    if tp is bool:
        return _check_bool
    if tp is int:
        return _check_int
    if tp is float:
        return _check_float
    if tp in (bytes, bytearray):
        return _check_bytes
    if tp is None or tp is type(None):
        return _check_none
    if isinstance(tp, IdMarker):
        table = tp.table

        def check_id(value: Any, path: str) -> Any:
            if isinstance(value, str) and ids.is_id_of(value, table):
                return value
            raise ValidationFailure(path, f"expected an id of table '{table}', got {_short(value)}")

        return check_id
    if isinstance(tp, str):
        raise TypeError(f"unresolved annotation {tp!r}; import the name it refers to")
    origin = get_origin(tp)
    if origin is typing.Annotated:
        base, *meta = get_args(tp)
        return _with_constraints(compile_type(base, owner=owner), meta)
    if origin is Literal:
        allowed = get_args(tp)

        def check_literal(value: Any, path: str) -> Any:
            for option in allowed:
                if value == option and type(value) is type(option):
                    return value
                if isinstance(option, int) and not isinstance(option, bool) and isinstance(value, float) and value == option:
                    return option
            raise ValidationFailure(path, f"expected one of {', '.join(repr(a) for a in allowed)}, got {_short(value)}")

        return check_literal
    if origin in (Union, types.UnionType):
        options = [compile_type(arg, owner=owner) for arg in get_args(tp)]
        names = " | ".join(_type_name(arg) for arg in get_args(tp))

        def check_union(value: Any, path: str) -> Any:
            failures = []
            for option in options:
                try:
                    return option(value, path)
                except ValidationFailure as exc:
                    failures.append(exc)
            # An option that got past the top level (the value was a list, but an item was wrong)
            # says more than "expected A | B".
            # So does one whose type matched but whose constraint did not ("must be at most 100 long").
            # And so does an enum's list of values ("expected one of 'a', 'b'").
            deeper = [f for f in failures if f.path != path or not f.detail.startswith("expected ")
                      or f.detail.startswith("expected one of ")]
            if len(deeper) == 1:
                raise deeper[0]
            raise ValidationFailure(path, f"expected {names}, got {describe(value)}")

        return check_union
    if origin in (list, typing.List) or tp is list:  # noqa: UP006
        args = get_args(tp)
        item = compile_type(args[0]) if args else _check_any

        def check_list(value: Any, path: str) -> Any:
            if not isinstance(value, list):
                raise ValidationFailure(path, f"expected array, got {describe(value)}")
            return [item(v, _join(path, i)) for i, v in enumerate(value)]

        return check_list
    if origin in (dict, typing.Dict) or tp is dict:  # noqa: UP006
        args = get_args(tp)
        item = compile_type(args[1]) if len(args) == 2 else _check_any

        def check_record(value: Any, path: str) -> Any:
            if not isinstance(value, dict):
                raise ValidationFailure(path, f"expected object, got {describe(value)}")
            return {k: item(v, _join(path, k)) for k, v in value.items()}

        return check_record
    if isinstance(tp, type) and hasattr(tp, "__table_fields__"):
        return tp.__table_validator__()  # type: ignore[attr-defined,no-any-return]
    if typing.is_typeddict(tp):
        return typeddict_shape(tp)
    raise TypeError(f"{tp!r} is not a type Corral can validate; use str, int, float, bool, bytes, None, Literal, unions, list, dict, TypedDict, a Table or Id[...]")


inspect_empty = __import__("inspect").Parameter.empty


def typeddict_shape(tp: Any) -> ObjectShape:
    hints = typing.get_type_hints(tp, include_extras=True)
    required_keys = getattr(tp, "__required_keys__", set(hints))
    fields: dict[str, tuple[Check, bool]] = {}
    for name, hint in hints.items():
        origin = get_origin(hint)
        if origin in (NotRequired, Required):
            hint = get_args(hint)[0]
        fields[name] = (compile_type(hint), name in required_keys)
    return ObjectShape(fields)


def _with_constraints(check: Check, meta: list[Any]) -> Check:
    rules: list[Callable[[Any, str], None]] = []
    for item in meta:
        items = list(item) if isinstance(item, at.GroupedMetadata) else [item]
        for rule in items:
            if isinstance(rule, at.MaxLen):
                rules.append(_rule(operator.le, rule.max_length, f"must be at most {rule.max_length} long", len))
            elif isinstance(rule, at.MinLen):
                rules.append(_rule(operator.ge, rule.min_length, f"must be at least {rule.min_length} long", len))
            elif isinstance(rule, at.Ge):
                rules.append(_rule(operator.ge, rule.ge, f"must be ≥ {rule.ge}"))
            elif isinstance(rule, at.Gt):
                rules.append(_rule(operator.gt, rule.gt, f"must be > {rule.gt}"))
            elif isinstance(rule, at.Le):
                rules.append(_rule(operator.le, rule.le, f"must be ≤ {rule.le}"))
            elif isinstance(rule, at.Lt):
                rules.append(_rule(operator.lt, rule.lt, f"must be < {rule.lt}"))
    if not rules:
        return check

    def constrained(value: Any, path: str) -> Any:
        value = check(value, path)
        for rule in rules:
            rule(value, path)
        return value

    return constrained


def _rule(compare: Callable[[Any, Any], bool], bound: Any, message: str,
          measure: Callable[[Any], Any] | None = None) -> Callable[[Any, str], None]:
    def apply(value: Any, path: str) -> None:
        if not compare(measure(value) if measure else value, bound):
            raise ValidationFailure(path, message)

    return apply


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, IdMarker):
        return repr(tp)
    if get_origin(tp) is typing.Annotated:
        return _type_name(get_args(tp)[0])
    return getattr(tp, "__name__", None) or repr(tp)
