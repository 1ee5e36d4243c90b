"""Who sees the operator page's data (corral/app/operator.py): the node's local user, people the
admin key granted the role, and no one else; bad user ids refused with nothing written.
SQLite and PostgreSQL. (The page itself, in a browser: test_console_manage_e2e.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from tests.app.tenancy_support import ANONYMOUS, call, internal, person, refusal, uid


@pytest.fixture
def node(make_node, database_url):  # type: ignore[no-untyped-def]
    made = make_node(database_url=database_url, functions=None)
    internal(made, "mutation", "operator:configure", {"local_user": uid("local")})  # what a node does at start
    return made


def operators(node: Any) -> list[tuple[str, str]]:
    return sorted((o["user_id"], o["granted_by"]) for o in internal(node, "query", "operator:list"))


def test_the_local_user_and_granted_people_see_every_sandbox_and_runner(node):
    local, ada = person("local"), person("ada")
    assert call(node, "query", "operator:me", {}, local) == {"user_id": uid("local"), "operator": True}
    found = call(node, "query", "operator:sandboxes", {}, local)
    assert found["sandboxes"] == [] and found["counts"]["running"] == 0
    assert call(node, "query", "operator:runners", {}, local) == []

    assert call(node, "query", "operator:me", {}, ada)["operator"] is False
    refused = refusal(node, "query", "operator:sandboxes", {}, ada)
    assert refused["code"] == "Forbidden" and "only the node's operators" in refused["message"]
    assert uid("ada") in refused["message"]  # what to ask the admin for
    assert refusal(node, "query", "operator:runners", {}, ada)["code"] == "Forbidden"
    assert refusal(node, "query", "operator:sandboxes", {}, ANONYMOUS)["code"] == "Unauthenticated"
    assert call(node, "query", "operator:me", {}, ANONYMOUS) == {"user_id": None, "operator": False}

    assert internal(node, "mutation", "operator:grant", {"user_id": uid("ada")})["granted"] is True
    assert internal(node, "mutation", "operator:grant", {"user_id": uid("ada")})["already"] is True
    assert call(node, "query", "operator:runners", {}, ada) == []
    assert internal(node, "mutation", "operator:revoke", {"user_id": uid("ada")})["revoked"] is True
    assert refusal(node, "query", "operator:runners", {}, ada)["code"] == "Forbidden"
    assert internal(node, "mutation", "operator:revoke", {"user_id": uid("local")})["revoked"] is False  # follows settings
    assert operators(node) == [(uid("local"), "node")]


def test_a_new_local_subject_replaces_the_old_one(node):
    internal(node, "mutation", "operator:grant", {"user_id": uid("ada")})
    internal(node, "mutation", "operator:configure", {"local_user": uid("ops")})
    internal(node, "mutation", "operator:configure", {"local_user": uid("ops")})  # each start: the same, once
    assert operators(node) == [(uid("ada"), "admin key"), (uid("ops"), "node")]
    assert refusal(node, "query", "operator:runners", {}, person("local"))["code"] == "Forbidden"


def test_the_operator_functions_are_not_for_users_to_call(node):
    for path, args in (("operator:grant", {"user_id": uid("ada")}), ("operator:revoke", {"user_id": uid("local")}),
                       ("operator:configure", {"local_user": uid("ada")})):
        assert "could not find public function" in str(refusal(node, "mutation", path, args, person("local"))).lower(), path
    assert operators(node) == [(uid("local"), "node")]


@pytest.mark.parametrize("user_id", ["ada", "|ada", "https://issuer.test|", " ", "x" * 501])
def test_a_grant_needs_a_user_id(node, user_id):
    from corral.engine.errors import FunctionError

    with pytest.raises(FunctionError) as refused:
        internal(node, "mutation", "operator:grant", {"user_id": user_id})
    message = str(getattr(refused.value, "data", None) or refused.value)
    assert "issuer|subject" in message or "user_id" in message, message
    assert operators(node) == [(uid("local"), "node")]
