"""Schema changes apply at start; collisions and violations are refused with a report."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from corral.engine.auth import Caller
from corral.engine.errors import SchemaError


def write_app(folder: Path, schema: str, functions: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "schema.py").write_text(textwrap.dedent(schema))
    (folder / "notes.py").write_text(textwrap.dedent(functions or """
        from typing import Any
        from corral import query, mutation

        @mutation
        def add(ctx, doc: dict[str, Any]) -> str:
            return ctx.db.insert("notes", doc)

        @query
        def by_tag(ctx, tag: str) -> list[Any]:
            return ctx.db.query("notes").with_index("by_tag", lambda q: q.eq("tag", tag)).collect()

        @query
        def all(ctx) -> list[Any]:
            return ctx.db.query("notes").collect()
    """))
    return folder


V1 = """
    from corral import Table
    class Note(Table, name="notes"):
        text: str
        tag: str
"""

V2_INDEX_AND_OPTIONAL = """
    from typing import NotRequired
    from corral import Table, index
    class Note(Table, name="notes"):
        text: str
        tag: str
        pinned: NotRequired[bool]
        indexes = [index("by_tag", "tag")]
"""

V3_NEW_REQUIRED = """
    from corral import Table, index
    class Note(Table, name="notes"):
        text: str
        tag: str
        priority: int
        indexes = [index("by_tag", "tag")]
"""


def run(node, kind, path, args=None):  # type: ignore[no-untyped-def]
    return asyncio.run(node.engine.call(kind, path, args or {}, Caller.anonymous()))[0]


def test_new_index_and_optional_field_apply_at_start_and_index_existing_rows(make_node, tmp_path, database_url):
    app = write_app(tmp_path / "app", V1, """
        from typing import Any
        from corral import mutation
        @mutation
        def add(ctx, doc: dict[str, Any]) -> str:
            return ctx.db.insert("notes", doc)
    """)
    data = tmp_path / "data"
    node = make_node(database_url, functions=app, data_dir=data)
    for i in range(5):
        run(node, "mutation", "notes:add", {"doc": {"text": str(i), "tag": "even" if i % 2 == 0 else "odd"}})
    node.stop()
    write_app(app, V2_INDEX_AND_OPTIONAL)
    node = make_node(database_url, functions=app, data_dir=data)
    assert [n["text"] for n in run(node, "query", "notes:by_tag", {"tag": "even"})] == ["0", "2", "4"]
    run(node, "mutation", "notes:add", {"doc": {"text": "5", "tag": "odd", "pinned": True}})
    assert [n["text"] for n in run(node, "query", "notes:by_tag", {"tag": "odd"})] == ["1", "3", "5"]


def test_a_change_existing_documents_violate_is_refused_naming_them(make_node, tmp_path, database_url):
    app = write_app(tmp_path / "app", V2_INDEX_AND_OPTIONAL)
    data = tmp_path / "data"
    node = make_node(database_url, functions=app, data_dir=data)
    ids = [run(node, "mutation", "notes:add", {"doc": {"text": str(i), "tag": "t"}}) for i in range(3)]
    node.stop()
    write_app(app, V3_NEW_REQUIRED)
    with pytest.raises(SchemaError) as err:
        make_node(database_url, functions=app, data_dir=data)
    report = err.value.message
    assert "notes" in report and "priority" in report and "3 existing document" in report
    for doc_id in ids:
        assert doc_id in report
    # nothing changed: the old schema still starts and serves every document
    write_app(app, V2_INDEX_AND_OPTIONAL)
    node = make_node(database_url, functions=app, data_dir=data)
    assert len(run(node, "query", "notes:all")) == 3


def test_a_users_modules_and_tables_named_like_corrals_own_are_the_users(make_node, tmp_path):
    app = write_app(tmp_path / "app", """
        from corral import Table
        class Mine(Table, name="workspaces"):
            name: str
    """, "")
    for module in ("workspaces", "sandboxes", "tasks", "threads"):
        (app / f"{module}.py").write_text("from corral import query\n@query\ndef mine(ctx) -> str:\n    return __name__\n")
    node = make_node(functions=app)
    assert node.registry.get("workspaces:mine") is not None
    assert node.registry.get("corral/workspaces:create") is not None  # Corral's own, beside the user's
    assert "workspaces" in node.registry.schema.tables and "corral_workspaces" in node.registry.schema.tables


def test_a_folder_in_corrals_namespace_is_refused(make_node, tmp_path):
    app = write_app(tmp_path / "app", V1)
    (app / "corral").mkdir()
    (app / "corral" / "workspaces.py").write_text("from corral import query\n@query\ndef mine(ctx) -> None:\n    return None\n")
    with pytest.raises(SchemaError) as err:
        make_node(functions=app)
    assert "'corral/' is Corral's own namespace" in err.value.message and str(app) in err.value.message


def test_a_table_in_corrals_namespace_is_refused(make_node, tmp_path):
    app = write_app(tmp_path / "app", """
        from corral import Table
        class Mine(Table, name="corral_things"):
            name: str
    """, "")
    with pytest.raises(SchemaError) as err:
        make_node(functions=app)
    assert "'corral_things'" in err.value.message and "Corral's own tables" in err.value.message


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ("from corral import Table, index\nclass A(Table, name='a'):\n    x: str\n    indexes = [index('by_y', 'y')]\n", "names field 'y'"),
        ("from corral import Table\nclass A(Table, name='_a'):\n    x: str\n", "must start with a letter"),
        ("from corral import Table\nclass A(Table, name='a'):\n    x: set[str]\n", "not a type Corral can validate"),
    ],
)
def test_bad_schemas_are_refused_at_start(make_node, tmp_path, schema, expected):
    app = tmp_path / "app"
    app.mkdir()
    (app / "schema.py").write_text(schema)
    with pytest.raises(SchemaError, match=expected):
        make_node(functions=app)


def test_a_module_that_fails_to_import_is_reported(make_node, tmp_path):
    app = write_app(tmp_path / "app", V1, "raise RuntimeError('broken on purpose')\n")
    with pytest.raises(SchemaError, match="notes.py.*broken on purpose"):
        make_node(functions=app)


def test_function_signatures_are_checked_at_start(make_node, tmp_path):
    app = write_app(tmp_path / "app", V1, "from corral import query\n@query\ndef f(ctx, x: complex) -> None:\n    return None\n")
    with pytest.raises(SchemaError, match="notes:f"):
        make_node(functions=app)


def test_a_new_field_with_a_default_is_stored_and_indexed_for_existing_documents(make_node, tmp_path, database_url):
    app = write_app(tmp_path / "app", V1, """
        from typing import Any
        from corral import mutation, query
        @mutation
        def add(ctx, doc: dict[str, Any]) -> str:
            return ctx.db.insert("notes", doc)
        @query
        def by_effort(ctx, effort: int) -> list[Any]:
            return ctx.db.query("notes").with_index("by_effort", lambda q: q.eq("effort", effort)).collect()
    """)
    data = tmp_path / "data"
    node = make_node(database_url, functions=app, data_dir=data)
    run(node, "mutation", "notes:add", {"doc": {"text": "old", "tag": "t"}})
    node.stop()
    (app / "schema.py").write_text(textwrap.dedent("""
        from corral import Table, index
        class Note(Table, name="notes"):
            text: str
            tag: str
            effort: int = 0
            indexes = [index("by_effort", "effort")]
    """))
    node = make_node(database_url, functions=app, data_dir=data)
    run(node, "mutation", "notes:add", {"doc": {"text": "new", "tag": "t"}})
    assert [n["text"] for n in run(node, "query", "notes:by_effort", {"effort": 0})] == ["old", "new"]


def test_a_function_named_list_does_not_break_later_annotations(make_node, tmp_path):
    app = write_app(tmp_path / "app", V1, """
        from typing import Any
        from corral import query

        @query
        def list(ctx) -> list[dict[str, Any]]:
            return ctx.db.query("notes").collect()

        @query
        def texts(ctx) -> list[str]:
            return [n["text"] for n in ctx.db.query("notes").collect()]
    """)
    node = make_node(functions=app)
    assert run(node, "query", "notes:texts") == []
