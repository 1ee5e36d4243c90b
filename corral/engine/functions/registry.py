"""The six function kinds and the registry that finds them by `module:function`."""

from __future__ import annotations

import builtins
import hashlib
import importlib
import importlib.util
import inspect
import sys
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ArgumentValidationError, ReturnValidationError, SchemaError
from ..schema import Check, ObjectShape, Schema, ValidationFailure, compile_type, tables_in_module

Kind = Literal["query", "mutation", "action"]


@dataclass
class FunctionSpec:
    fn: Callable[..., Any]
    kind: Kind
    public: bool
    path: str = ""
    module: str = ""
    _args: ObjectShape | None = None
    _returns: Check | None = None
    accepts_extra: bool = False
    compiled: bool = False
    arg_names: list[str] = field(default_factory=list)
    for_runners: bool = False  # runner keys may call it (see `for_runners` below); they may call nothing else

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __getitem__(self, item: Any) -> Any:
        """A function named `list` (Convex's idiom) still lets later annotations say `list[Doc]`."""
        shadowed = getattr(builtins, self.name, None)
        if isinstance(shadowed, type):
            return shadowed[item]  # type: ignore[index]
        raise TypeError(f"function {self.name!r} is not subscriptable")

    @property
    def name(self) -> str:
        return self.fn.__name__

    def compile(self) -> None:
        """Turn the signature into validators; raises TypeError on an unsupported annotation."""
        if self.compiled:
            return
        hints = typing.get_type_hints(self.fn, globalns=_annotation_namespace(self.fn), include_extras=True)
        params = list(inspect.signature(self.fn).parameters.values())
        if not params:
            raise TypeError(f"{self.fn.__qualname__} must take ctx as its first parameter")
        shape: dict[str, tuple[Check, bool]] = {}
        for param in params[1:]:
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                self.accepts_extra = True
                continue
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                raise TypeError(f"{self.fn.__qualname__}: *args is not supported; arguments are passed by name")
            hint = hints.get(param.name, Any)
            shape[param.name] = (compile_type(hint), param.default is inspect.Parameter.empty)
            self.arg_names.append(param.name)
        self._args = ObjectShape(shape)
        if "return" in hints and hints["return"] is not Any:
            self._returns = compile_type(hints["return"])
        self.compiled = True

    def validate_args(self, args: Any) -> dict[str, Any]:
        if not self.compiled:
            self.compile()
        assert self._args is not None
        if not isinstance(args, dict):
            raise ArgumentValidationError(f"ArgumentValidationError: arguments to {self.path} must be an object, not {type(args).__name__}")
        try:
            if self.accepts_extra:
                known = {k: v for k, v in args.items() if k in self._args.fields}
                extra = {k: v for k, v in args.items() if k not in self._args.fields}
                return {**self._args(known, ""), **extra}
            return dict(self._args(args, ""))
        except ValidationFailure as exc:
            raise ArgumentValidationError(
                f"ArgumentValidationError: argument `{exc.path}` of {self.path}: {exc.detail}" if exc.path
                else f"ArgumentValidationError: {self.path}: {exc.detail}") from None

    def validate_return(self, value: Any) -> Any:
        if self._returns is None:
            return value
        try:
            return self._returns(value, "")
        except ValidationFailure as exc:
            where = f" at `{exc.path}`" if exc.path else ""
            raise ReturnValidationError(f"ReturnsValidationError: {self.path} returned a value that does not match its return type{where}: {exc.detail}") from None


def _annotation_namespace(fn: Callable[..., Any]) -> dict[str, Any]:
    """The module's globals, except that a function named like a builtin (`list`, `get`…)
    does not shadow that builtin inside annotations."""
    module = sys.modules.get(fn.__module__)
    namespace = dict(vars(module)) if module else {}
    for name, value in namespace.items():
        if isinstance(value, FunctionSpec) and hasattr(builtins, name):
            namespace[name] = getattr(builtins, name)
    return namespace


def _decorator(kind: Kind, public: bool) -> Callable[..., Any]:
    def decorate(fn: Callable[..., Any]) -> FunctionSpec:
        if isinstance(fn, FunctionSpec):
            raise TypeError("a function can have only one kind decorator")
        is_async = inspect.iscoroutinefunction(fn)
        if kind == "action" and not is_async:
            raise TypeError(f"action {fn.__qualname__} must be `async def`")
        if kind != "action" and is_async:
            raise TypeError(f"{kind} {fn.__qualname__} must be a plain `def`: queries and mutations are synchronous")
        return FunctionSpec(fn=fn, kind=kind, public=public)

    decorate.__name__ = ("" if public else "internal_") + kind
    return decorate


query = _decorator("query", True)
mutation = _decorator("mutation", True)
action = _decorator("action", True)
internal_query = _decorator("query", False)
internal_mutation = _decorator("mutation", False)
internal_action = _decorator("action", False)


def for_runners(spec: FunctionSpec) -> FunctionSpec:
    """Let runner keys call this function: it is how a runner registers and reports its work.
    Every other function refuses a runner key. Put it above the kind decorator:

        @for_runners
        @mutation
        def report(ctx: MutationCtx, ...) -> None: ...
    """
    if not isinstance(spec, FunctionSpec):
        raise TypeError("@for_runners goes above @query, @mutation or @action (or their internal_ forms)")
    spec.for_runners = True
    return spec


def canonical_path(path: str) -> str:
    """`messages:list`, `messages.js:list`, `dir/messages:list`; no colon means `default`."""
    module, sep, name = path.rpartition(":")
    if not sep:
        module, name = path, "default"
    if module.endswith(".js"):
        module = module[:-3]
    if module.endswith(".py"):
        module = module[:-3]
    return f"{module}:{name}"


class Registry:
    """Every function and table a node serves."""

    RESERVED_MODULES = {"schema", "crons", "http"}

    def __init__(self) -> None:
        self.functions: dict[str, FunctionSpec] = {}
        self.schema = Schema()
        self.modules: dict[str, str] = {}  # module path → where it came from
        self.roots: list[tuple[str, Path, str]] = []  # (package, folder, origin) of each tree loaded: crons.py, http.py
        self.namespaces: list[str] = []  # each loaded package's module prefix and table prefix

    def get(self, path: str) -> FunctionSpec | None:
        return self.functions.get(canonical_path(path))

    def add_module(self, module_path: str, module: types.ModuleType, origin: str) -> None:
        if module_path in self.modules:
            raise SchemaError(f"module '{module_path}' in {origin} collides with the module of the same name in {self.modules[module_path]}")
        self.modules[module_path] = origin
        for attr, value in vars(module).items():
            if isinstance(value, FunctionSpec) and not value.path:
                value.path = f"{module_path}:{attr}"
                value.module = module_path
                try:
                    value.compile()
                except (TypeError, NameError) as exc:
                    raise SchemaError(f"function {value.path} ({origin}): {exc}") from exc
                self.functions[value.path] = value
            elif isinstance(value, FunctionSpec) and value.module == module_path:
                self.functions[f"{module_path}:{attr}"] = value

    def load_package(self, package: str, origin: str, *, namespace: str) -> None:
        """Load an importable package laid out like a Convex folder (schema.py + modules) as a namespace.

        Its modules are found under `<namespace>/` (`corral/workspaces:create`) and its tables must be
        named `<namespace>_…`; a user's functions folder may take neither (docs/adr/0011)."""
        if namespace in self.namespaces:
            raise SchemaError(f"namespace '{namespace}' is loaded twice")
        self.namespaces.append(namespace)
        pkg = importlib.import_module(package)
        root = Path(next(iter(pkg.__path__)))
        self._load_tree(package, root, origin, namespace=namespace)

    def load_folder(self, folder: Path) -> None:
        """Load a user's functions folder as its own package, so modules can `from .schema import …`."""
        folder = Path(folder).resolve()
        if not folder.is_dir():
            raise SchemaError(f"functions folder {folder} does not exist")
        package = "corral_functions_" + hashlib.sha256(str(folder).encode()).hexdigest()[:10]
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]  # load the folder as it is now, not as an earlier node saw it
        spec = importlib.util.spec_from_file_location(package, folder / "__init__.py", submodule_search_locations=[str(folder)])
        if spec is None or spec.loader is None:
            raise SchemaError(f"cannot load {folder} as a package")
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[package] = pkg
        if (folder / "__init__.py").exists():
            spec.loader.exec_module(pkg)
        self._load_tree(package, folder, str(folder))

    def declaration_modules(self, name: str, what: str) -> Iterator[tuple[types.ModuleType, str]]:
        """Each loaded tree's `<name>.py` (crons, http), imported, with where it came from."""
        for package, root, origin in self.roots:
            if not (root / f"{name}.py").is_file():
                continue
            where = f"{origin}/{name}.py"
            try:
                module = importlib.import_module(f"{package}.{name}")
            except Exception as exc:
                raise SchemaError(f"cannot load the {what} of {where}: {type(exc).__name__}: {exc}") from exc
            yield module, where

    def _load_tree(self, package: str, root: Path, origin: str, *, namespace: str | None = None) -> None:
        self.roots.append((package, root, origin))
        schema_file = root / "schema.py"
        if schema_file.exists():
            schema_module = self._import(f"{package}.schema", schema_file, origin)
            for cls in tables_in_module(schema_module):
                self._check_table_namespace(cls.__table_name__, f"{origin}/schema.py", namespace)
                self.schema.add_table(cls, module=f"{origin}/schema.py")
        for file in sorted(root.rglob("*.py")):
            rel = file.relative_to(root)
            if any(part.startswith(("_", ".")) for part in rel.parts) or rel.parts[0] in ("lib", "tests"):
                continue
            module_path = "/".join(rel.with_suffix("").parts)
            if module_path in self.RESERVED_MODULES:
                continue
            if namespace is not None:
                module_path = f"{namespace}/{module_path}"
            elif (taken := next((n for n in self.namespaces if module_path.startswith(n + "/")), None)) is not None:
                raise SchemaError(f"module '{module_path}' ({origin}/{rel}): the folder '{taken}/' is Corral's own "
                                  f"namespace ({taken}/workspaces:create, …); rename your folder")
            dotted = f"{package}." + ".".join(rel.with_suffix("").parts)
            module = self._import(dotted, file, origin)
            self.add_module(module_path, module, f"{origin}/{rel}")

    def _check_table_namespace(self, table: str, where: str, namespace: str | None) -> None:
        if namespace is not None and not table.startswith(namespace + "_"):
            raise SchemaError(f"table '{table}' ({where}) must be named '{namespace}_…', inside its package's namespace")
        if namespace is None and (taken := next((n for n in self.namespaces if table.startswith(n + "_")), None)):
            raise SchemaError(f"table '{table}' ({where}): names starting '{taken}_' are Corral's own tables; rename yours")

    def _import(self, dotted: str, file: Path, origin: str) -> types.ModuleType:
        try:
            return importlib.import_module(dotted)
        except SchemaError:
            raise
        except Exception as exc:
            raise SchemaError(f"cannot import {file} ({origin}): {type(exc).__name__}: {exc}") from exc
