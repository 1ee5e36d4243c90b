"""`ctx.sandboxes` (docs/adr/0012-sandboxes-capability.md): an engine used alone has none, and an
action that reaches for it is told so; the node's own is the fleet's."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from corral.engine.auth import Caller
from corral.engine.errors import ConvexError, FunctionError
from corral.engine.runtime import NewSandbox, NoSandboxes
from corral.engine.runtime.engine import Engine
from corral.engine.runtime.sandboxes import NO_SANDBOXES

ACTION = '''
from corral import action, ActionCtx
from corral.engine.runtime import NewSandbox

@action
async def boot(ctx: ActionCtx) -> str:
    made = await ctx.sandboxes.create("someone", NewSandbox())
    return made["sandbox_id"]
'''


def test_an_engine_alone_has_no_sandboxes_and_says_where_they_come_from(make_node, tmp_path: Path):
    folder = tmp_path / "fns"
    folder.mkdir()
    (folder / "box.py").write_text(textwrap.dedent(ACTION))
    node = make_node(functions=folder)
    engine: Engine = node.engine
    engine.sandboxes = NoSandboxes()  # what Engine(...) has until a node provides one
    with pytest.raises(FunctionError) as err:
        asyncio.run(engine.call("action", "box:boot", {}, Caller.anonymous()))
    data = getattr(err.value, "data", None)
    assert data == {"code": "SandboxesUnavailable", "message": NO_SANDBOXES}
    with pytest.raises(ConvexError):
        NoSandboxes().create("someone", NewSandbox())


def test_a_node_gives_actions_the_fleets_sandboxes(make_node):
    from corral.fleet import FleetSandboxes

    node = make_node(functions=None)
    assert isinstance(node.engine.sandboxes, FleetSandboxes)
