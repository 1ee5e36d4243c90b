"""Workspaces, members, invitations, profiles, threads and the audit trail (corral/app), called as
people with signed-in identities: each function's rules, and bad input refused with nothing
written. SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from corral.engine.values import ids

from .tenancy_support import ANONYMOUS, Tenancy, call, code, internal, person, refusal, uid

PAGE = {"numItems": 50, "cursor": None}


@pytest.fixture
def node(make_node, database_url):  # type: ignore[no-untyped-def]
    return make_node(database_url=database_url, functions=None)


@pytest.fixture
def t(node: Any) -> Tenancy:
    return Tenancy(node)


def snapshot(t: Tenancy) -> Any:
    """Everything a refused call could have changed."""
    owner = t.owner
    return (call(t.node, "query", "workspaces:get", {"workspace_id": t.workspace}, owner), t.roles(), t.audit(),
            call(t.node, "query", "workspace_members:list_invitations", {"workspace_id": t.workspace}, owner),
            call(t.node, "query", "threads:list", {"workspace_id": t.workspace, "paginationOpts": PAGE}, owner)["page"])


def refused(t: Tenancy, kind: str, path: str, args: dict[str, Any], caller: Any, expect: str) -> Any:
    """Call and expect a refusal whose code (or message, for argument errors) contains `expect`; nothing written."""
    before = snapshot(t)
    error = refusal(t.node, kind, path, args, caller)
    assert expect in (code(error) if isinstance(error, dict) else error), error
    assert snapshot(t) == before
    return error


# -- workspaces --------------------------------------------------------------------------------

def test_the_creator_owns_the_workspace_and_each_member_sees_their_role(t):
    assert [(w["name"], w["role"]) for w in call(t.node, "query", "workspaces:list", {}, t.owner)] == [("Lab", "owner")]
    assert [(w["name"], w["role"]) for w in call(t.node, "query", "workspaces:list", {}, t.admin)] == [("Lab", "admin")]
    assert call(t.node, "query", "workspaces:list", {}, ANONYMOUS) == []
    got = call(t.node, "query", "workspaces:get", {"workspace_id": t.workspace}, t.member)
    assert (got["name"], got["owner_id"], got["status"], got["role"]) == ("Lab", uid("own"), "active", "member")
    assert call(t.node, "query", "workspaces:get", {"workspace_id": t.workspace}, t.outsider) is None
    assert call(t.node, "query", "workspaces:get", {"workspace_id": ids.new_id("corral_workspaces")}, t.owner) is None
    assert refusal(t.node, "mutation", "workspaces:create", {"name": "Mine"}, ANONYMOUS)["code"] == "Unauthenticated"


def test_only_the_owner_renames_and_a_name_must_fit(t):
    call(t.node, "mutation", "workspaces:update", {"workspace_id": t.workspace, "name": "  Lab two "}, t.owner)
    assert call(t.node, "query", "workspaces:get", {"workspace_id": t.workspace}, t.owner)["name"] == "Lab two"
    assert t.audit()[0]["action"] == "workspace.rename" and t.audit()[0]["before"] == {"name": "Lab"}
    args = {"workspace_id": t.workspace, "name": "x"}
    refused(t, "mutation", "workspaces:update", args, t.admin, "Forbidden")
    refused(t, "mutation", "workspaces:update", args, t.outsider, "NotFound")
    refused(t, "mutation", "workspaces:update", {**args, "name": "x" * 101}, t.owner, "must be at most 100 long")
    refused(t, "mutation", "workspaces:update", {**args, "name": "   "}, t.owner, "InvalidArgument")
    refused(t, "mutation", "workspaces:update", {**args, "name": ""}, t.owner, "must be at least 1 long")
    refused(t, "mutation", "workspaces:update", {**args, "workspace_id": "not-an-id"}, t.owner, "expected an id of table 'corral_workspaces'")
    refused(t, "mutation", "workspaces:update", {**args, "workspace_id": 42}, t.owner, "expected an id of table 'corral_workspaces'")
    refused(t, "mutation", "workspaces:update", {**args, "name": ["Lab"]}, t.owner, "argument `name`")
    thread = call(t.node, "mutation", "threads:create", {"workspace_id": t.workspace}, t.owner)
    refused(t, "mutation", "workspaces:update", {**args, "workspace_id": thread}, t.owner, "expected an id of table 'corral_workspaces'")
    assert refusal(t.node, "mutation", "workspaces:create", {"name": "y" * 101}, t.owner)
    assert [w["name"] for w in call(t.node, "query", "workspaces:list", {}, t.owner)] == ["Lab two"]


def test_a_non_member_is_told_what_a_missing_id_gets(t):
    missing = ids.new_id("corral_workspaces")
    for path, args in [("workspaces:update", {"name": "x"}), ("workspaces:remove", {}),
                       ("workspace_members:leave", {}), ("threads:create", {})]:
        assert refusal(t.node, "mutation", path, {"workspace_id": t.workspace, **args}, t.outsider) == \
            refusal(t.node, "mutation", path, {"workspace_id": missing, **args}, t.outsider)


def test_ownership_goes_to_an_admin_only(t):
    refused(t, "mutation", "workspaces:transfer_ownership", {"workspace_id": t.workspace, "user_id": uid("mem")}, t.owner, "InvalidArgument")
    refused(t, "mutation", "workspaces:transfer_ownership", {"workspace_id": t.workspace, "user_id": uid("out")}, t.owner, "InvalidArgument")
    refused(t, "mutation", "workspaces:transfer_ownership", {"workspace_id": t.workspace, "user_id": uid("adm")}, t.admin, "Forbidden")
    call(t.node, "mutation", "workspaces:transfer_ownership", {"workspace_id": t.workspace, "user_id": uid("adm")}, t.owner)
    assert t.roles() == {uid("own"): "admin", uid("adm"): "owner", uid("mem"): "member"}
    assert call(t.node, "query", "workspaces:get", {"workspace_id": t.workspace}, t.admin)["owner_id"] == uid("adm")
    entry = t.audit()[0]
    assert (entry["action"], entry["actor"], entry["target"], entry["after"]) == \
        ("workspace.transfer", uid("own"), uid("adm"), {"owner_id": uid("adm")})
    # the new owner now holds the owner's rights, the old one an admin's
    call(t.node, "mutation", "workspaces:update", {"workspace_id": t.workspace, "name": "Renamed"}, t.admin)
    refused(t, "mutation", "workspaces:update", {"workspace_id": t.workspace, "name": "x"}, t.owner, "Forbidden")


def test_the_owner_sets_a_monthly_budget(t):
    args = {"workspace_id": t.workspace, "monthly_budget_usd": 25}
    call(t.node, "mutation", "workspaces:set_budget", args, t.owner)
    assert call(t.node, "query", "workspaces:get", {"workspace_id": t.workspace}, t.member)["monthly_budget_usd"] == 25.0
    assert (t.audit()[0]["action"], t.audit()[0]["after"]) == ("workspace.budget", {"monthly_budget_usd": 25.0})
    refused(t, "mutation", "workspaces:set_budget", args, t.admin, "Forbidden")
    refused(t, "mutation", "workspaces:set_budget", {**args, "monthly_budget_usd": -1.0}, t.owner, "InvalidArgument")
    refused(t, "mutation", "workspaces:set_budget", {**args, "monthly_budget_usd": "lots"}, t.owner, "expected")
    call(t.node, "mutation", "workspaces:set_budget", {**args, "monthly_budget_usd": None}, t.owner)
    assert call(t.node, "query", "workspaces:get", {"workspace_id": t.workspace}, t.owner)["monthly_budget_usd"] is None


# -- members -----------------------------------------------------------------------------------

def test_adding_members_follows_the_rules(t):
    args = {"workspace_id": t.workspace, "role": "member"}
    assert call(t.node, "mutation", "workspace_members:add_member", {**args, "user_id": uid("new")}, t.admin) == \
        {"status": "member", "user_id": uid("new"), "role": "member"}
    assert t.audit()[0]["action"] == "member.add" and t.audit()[0]["actor"] == uid("adm")
    refused(t, "mutation", "workspace_members:add_member", {**args, "user_id": uid("x"), "role": "admin"}, t.admin, "Forbidden")
    refused(t, "mutation", "workspace_members:add_member", {**args, "user_id": uid("x")}, t.member, "Forbidden")
    refused(t, "mutation", "workspace_members:add_member", {**args, "user_id": uid("x")}, t.outsider, "NotFound")
    refused(t, "mutation", "workspace_members:add_member", {**args, "user_id": uid("mem")}, t.owner, "AlreadyMember")
    error = refused(t, "mutation", "workspace_members:add_member", {**args, "user_id": uid("own"), "role": "admin"}, t.owner, "AlreadyMember")
    assert "already this workspace's owner" in error["message"]
    refused(t, "mutation", "workspace_members:add_member", {**args, "user_id": uid("x"), "role": "owner"}, t.owner, "argument `role`")
    refused(t, "mutation", "workspace_members:add_member", {**args, "user_id": uid("x"), "role": "boss"}, t.owner, "argument `role`")
    refused(t, "mutation", "workspace_members:add_member", args, t.owner, "InvalidArgument")
    refused(t, "mutation", "workspace_members:add_member", {**args, "user_id": uid("x"), "email": "x@example.com"}, t.owner, "InvalidArgument")
    refused(t, "mutation", "workspace_members:add_member", {**args, "user_id": "u" * 513}, t.owner, "must be at most 512 long")
    refused(t, "mutation", "workspace_members:add_member", {**args, "email": "not an email"}, t.owner, "InvalidArgument")


def test_an_email_invitation_waits_until_that_person_signs_in(t):
    args = {"workspace_id": t.workspace, "role": "admin", "email": "Grace@Example.com"}
    invited = call(t.node, "mutation", "workspace_members:add_member", args, t.owner)
    assert (invited["status"], invited["email"]) == ("invited", "grace@example.com")
    refused(t, "mutation", "workspace_members:add_member", args, t.owner, "AlreadyInvited")
    pending = call(t.node, "query", "workspace_members:list_invitations", {"workspace_id": t.workspace}, t.admin)
    assert [(i["email"], i["role"], i["invited_by"]) for i in pending] == [("grace@example.com", "admin", uid("own"))]
    assert refusal(t.node, "query", "workspace_members:list_invitations", {"workspace_id": t.workspace}, t.member)["code"] == "Forbidden"
    # someone with an unverified address claims nothing
    call(t.node, "mutation", "users:sync_profile", {}, person("mallory", email="grace@example.com", emailVerified=False))
    assert uid("mallory") not in t.roles()
    grace = person("grace", "Grace Hopper", "GRACE@example.com", pictureUrl="https://example.com/g.png")
    profile = call(t.node, "mutation", "users:sync_profile", {}, grace)
    assert (profile["token_identifier"], profile["email"], profile["picture"]) == (uid("grace"), "grace@example.com", "https://example.com/g.png")
    assert t.roles()[uid("grace")] == "admin"
    assert call(t.node, "query", "workspace_members:list_invitations", {"workspace_id": t.workspace}, t.owner) == []
    entry = t.audit()[0]
    assert (entry["action"], entry["actor"], entry["target"], entry["after"]) == ("invitation.accept", uid("grace"), uid("grace"), {"role": "admin"})
    # once they have signed in, an email adds them at once
    other = call(t.node, "mutation", "workspaces:create", {"name": "Second"}, t.owner)
    added = call(t.node, "mutation", "workspace_members:add_member", {**args, "workspace_id": other, "role": "member"}, t.owner)
    assert added == {"status": "member", "user_id": uid("grace"), "role": "member"}


def test_an_invitation_can_be_withdrawn(t):
    call(t.node, "mutation", "workspace_members:add_member", {"workspace_id": t.workspace, "role": "member", "email": "z@example.com"}, t.admin)
    refused(t, "mutation", "workspace_members:cancel_invitation", {"workspace_id": t.workspace, "email": "z@example.com"}, t.member, "Forbidden")
    refused(t, "mutation", "workspace_members:cancel_invitation", {"workspace_id": t.workspace, "email": "q@example.com"}, t.admin, "NotFound")
    call(t.node, "mutation", "workspace_members:cancel_invitation", {"workspace_id": t.workspace, "email": "Z@example.com"}, t.admin)
    call(t.node, "mutation", "users:sync_profile", {}, person("zed", email="z@example.com"))
    assert uid("zed") not in t.roles()


def test_removing_members_follows_the_rules(t):
    t.add(uid("adm2"), "admin")
    args = {"workspace_id": t.workspace}
    refused(t, "mutation", "workspace_members:remove_member", {**args, "user_id": uid("own")}, t.owner, "Forbidden")
    refused(t, "mutation", "workspace_members:remove_member", {**args, "user_id": uid("own")}, t.admin, "Forbidden")
    refused(t, "mutation", "workspace_members:remove_member", {**args, "user_id": uid("adm2")}, t.admin, "Forbidden")
    refused(t, "mutation", "workspace_members:remove_member", {**args, "user_id": uid("adm")}, t.member, "Forbidden")
    refused(t, "mutation", "workspace_members:remove_member", {**args, "user_id": uid("nobody")}, t.admin, "NotFound")
    refused(t, "mutation", "workspace_members:remove_member", {**args, "user_id": uid("mem")}, t.outsider, "NotFound")
    call(t.node, "mutation", "workspace_members:remove_member", {**args, "user_id": uid("mem")}, t.admin)
    call(t.node, "mutation", "workspace_members:remove_member", {**args, "user_id": uid("adm2")}, t.owner)
    assert t.roles() == {uid("own"): "owner", uid("adm"): "admin"}
    assert [e["action"] for e in t.audit()[:2]] == ["member.remove", "member.remove"]
    assert call(t.node, "query", "workspaces:get", {"workspace_id": t.workspace}, t.member) is None


def test_changing_roles_follows_the_rules(t):
    t.add(uid("mem2"), "member")
    args = {"workspace_id": t.workspace}
    refused(t, "mutation", "workspace_members:update_role", {**args, "user_id": uid("own"), "new_role": "member"}, t.owner, "Forbidden")
    refused(t, "mutation", "workspace_members:update_role", {**args, "user_id": uid("mem"), "new_role": "admin"}, t.admin, "Forbidden")
    refused(t, "mutation", "workspace_members:update_role", {**args, "user_id": uid("adm"), "new_role": "member"}, t.admin, "Forbidden")
    refused(t, "mutation", "workspace_members:update_role", {**args, "user_id": uid("mem"), "new_role": "member"}, t.member, "Forbidden")
    refused(t, "mutation", "workspace_members:update_role", {**args, "user_id": uid("mem"), "new_role": "owner"}, t.owner, "argument `new_role`")
    refused(t, "mutation", "workspace_members:update_role", {**args, "user_id": uid("zz"), "new_role": "member"}, t.owner, "NotFound")
    call(t.node, "mutation", "workspace_members:update_role", {**args, "user_id": uid("mem"), "new_role": "admin"}, t.owner)
    call(t.node, "mutation", "workspace_members:update_role", {**args, "user_id": uid("adm"), "new_role": "member"}, t.owner)
    assert t.roles() == {uid("own"): "owner", uid("adm"): "member", uid("mem"): "admin", uid("mem2"): "member"}
    entry = t.audit()[0]
    assert (entry["action"], entry["target"], entry["before"], entry["after"]) == ("member.role", uid("adm"), {"role": "admin"}, {"role": "member"})


def test_anyone_but_the_owner_may_leave(t):
    refused(t, "mutation", "workspace_members:leave", {"workspace_id": t.workspace}, t.owner, "Forbidden")
    call(t.node, "mutation", "workspace_members:leave", {"workspace_id": t.workspace}, t.admin)
    call(t.node, "mutation", "workspace_members:leave", {"workspace_id": t.workspace}, t.member)
    assert t.roles() == {uid("own"): "owner"}
    assert call(t.node, "query", "workspaces:list", {}, t.member) == []
    assert [e["action"] for e in t.audit()[:2]] == ["member.leave", "member.leave"]


def test_members_are_listed_with_their_profiles(t):
    rows = call(t.node, "query", "workspace_members:list_members", {"workspace_id": t.workspace}, t.member)
    assert [(r["role"], r["name"], r["email"]) for r in rows] == [
        ("owner", "Olive Owner", "olive@example.com"), ("admin", "Ada Admin", "ada@example.com"),
        ("member", "Max Member", "max@example.com")]
    t.add(uid("ghost"), "member")  # added by id before ever signing in: no profile yet
    last = call(t.node, "query", "workspace_members:list_members", {"workspace_id": t.workspace}, t.owner)[-1]
    assert (last["user_id"], last["role"], last["name"], last["email"]) == (uid("ghost"), "member", None, None)
    assert refusal(t.node, "query", "workspace_members:list_members", {"workspace_id": t.workspace}, t.outsider)["code"] == "NotFound"


def test_a_profile_follows_the_token_at_each_sign_in(node):
    assert call(node, "query", "users:me", {}, ANONYMOUS) is None
    ada = person("ada", "Ada", "ada@example.com")
    assert call(node, "query", "users:me", {}, ada) is None
    first = call(node, "mutation", "users:sync_profile", {}, ada)
    node.clock.advance(60)
    again = call(node, "mutation", "users:sync_profile", {}, person("ada", "Ada Lovelace", "ada@example.com"))
    assert again["_id"] == first["_id"] and again["name"] == "Ada Lovelace" and again["updated_at"] > first["updated_at"]
    assert call(node, "query", "users:me", {}, ada)["name"] == "Ada Lovelace"
    assert refusal(node, "mutation", "users:sync_profile", {}, ANONYMOUS)["code"] == "Unauthenticated"
    from corral.engine.auth import Caller, MachineKey

    key = Caller.api_key(MachineKey(id="k1", name="sdk", kind="client"))
    assert refusal(node, "mutation", "users:sync_profile", {}, key)["code"] == "Forbidden"


# -- threads and the audit trail ---------------------------------------------------------------

def test_threads_belong_to_their_workspace(t):
    made = [call(t.node, "mutation", "threads:create", {"workspace_id": t.workspace, "title": f"T{n}"}, t.member) for n in range(5)]
    untitled = call(t.node, "mutation", "threads:create", {"workspace_id": t.workspace}, t.member)
    got = call(t.node, "query", "threads:get", {"thread_id": made[0]}, t.admin)
    assert (got["title"], got["creator_id"], got["status"], got["workspace_id"]) == ("T0", uid("mem"), "active", t.workspace)
    assert call(t.node, "query", "threads:get", {"thread_id": untitled}, t.owner)["title"] is None
    assert call(t.node, "query", "threads:get", {"thread_id": made[0]}, t.outsider) is None
    assert call(t.node, "query", "threads:get", {"thread_id": made[0]}, ANONYMOUS) is None
    first = call(t.node, "query", "threads:list", {"workspace_id": t.workspace, "paginationOpts": {"numItems": 4, "cursor": None}}, t.member)
    rest = call(t.node, "query", "threads:list", {"workspace_id": t.workspace,
                                                  "paginationOpts": {"numItems": 4, "cursor": first["continueCursor"], "id": 1}}, t.member)
    assert (first["isDone"], rest["isDone"]) == (False, True)
    assert [d["_id"] for d in first["page"] + rest["page"]] == [untitled, *reversed(made)]
    refused(t, "mutation", "threads:create", {"workspace_id": t.workspace, "title": "x" * 201}, t.member, "must be at most 200 long")
    refused(t, "mutation", "threads:create", {"workspace_id": t.workspace, "title": "x"}, t.outsider, "NotFound")
    refused(t, "mutation", "threads:create", {"workspace_id": t.workspace, "title": "x"}, ANONYMOUS, "Unauthenticated")
    assert "expected an id of table 'corral_threads'" in refusal(t.node, "query", "threads:get", {"thread_id": t.workspace}, t.owner)
    assert refusal(t.node, "query", "threads:list", {"workspace_id": t.workspace, "paginationOpts": PAGE}, t.outsider)["code"] == "NotFound"
    assert "paginationOpts.numItems" in refusal(t.node, "query", "threads:list", {"workspace_id": t.workspace,
                                                                                   "paginationOpts": {"numItems": -1, "cursor": None}}, t.owner)


def test_owners_and_admins_read_the_audit_trail_newest_first(t):
    args = {"workspace_id": t.workspace, "paginationOpts": {"numItems": 2, "cursor": None}}
    page = call(t.node, "query", "audit:list", args, t.admin)
    assert [e["action"] for e in page["page"]] == ["member.add", "member.add"] and not page["isDone"]
    entry = page["page"][0]
    assert (entry["actor"], entry["target"], entry["before"], entry["after"]) == (uid("own"), uid("mem"), None, {"role": "member"})
    assert isinstance(entry["at"], float)
    rest = call(t.node, "query", "audit:list", {**args, "paginationOpts": {"numItems": 10, "cursor": page["continueCursor"]}}, t.owner)
    assert [e["action"] for e in rest["page"]] == ["workspace.create"] and rest["isDone"]
    assert refusal(t.node, "query", "audit:list", args, t.member)["code"] == "Forbidden"
    assert refusal(t.node, "query", "audit:list", args, t.outsider)["code"] == "NotFound"


# -- removing a workspace ----------------------------------------------------------------------

def counts(node: Any) -> dict[str, int]:
    tables = ("corral_workspaces", "corral_workspace_members", "corral_invitations", "corral_threads", "corral_audit_log")
    with node.engine.store.snapshot() as (conn, _ts):
        return {table: conn.count(table) for table in tables}


def test_removing_a_workspace_deletes_everything_in_it_in_batches(t, monkeypatch):
    import corral.app.workspaces

    monkeypatch.setattr(corral.app.workspaces, "PURGE_BATCH", 3)  # several batches from a few documents
    for n in range(7):
        call(t.node, "mutation", "threads:create", {"workspace_id": t.workspace, "title": f"T{n}"}, t.member)
    call(t.node, "mutation", "workspace_members:add_member", {"workspace_id": t.workspace, "role": "member", "email": "w@example.com"}, t.owner)
    call(t.node, "mutation", "threads:create", {"workspace_id": t.other, "title": "kept"}, t.outsider)
    kept = counts(t.node)
    refused(t, "mutation", "workspaces:remove", {"workspace_id": t.workspace}, t.admin, "Forbidden")
    call(t.node, "mutation", "workspaces:remove", {"workspace_id": t.workspace}, t.owner)
    got = call(t.node, "query", "workspaces:get", {"workspace_id": t.workspace}, t.member)
    assert got["status"] == "deleting"
    assert refusal(t.node, "mutation", "threads:create", {"workspace_id": t.workspace}, t.member)["code"] == "WorkspaceDeleting"
    assert refusal(t.node, "mutation", "workspaces:remove", {"workspace_id": t.workspace}, t.owner)["code"] == "WorkspaceDeleting"
    # the node's scheduler is not running here: drive the batches the way it would, one per transaction
    steps = []
    while (kind := internal(t.node, "mutation", "workspaces:purge", {"workspace_id": t.workspace})) is not None:
        steps.append(kind)
    assert steps == ["threads"] * 3 + ["invitations", "members", "audit entries", "audit entries", "workspace"]
    after = counts(t.node)
    mine = {"corral_workspaces": 1, "corral_workspace_members": 3, "corral_invitations": 1, "corral_threads": 7}
    assert after["corral_workspaces"] == kept["corral_workspaces"] - 1
    for table, n in mine.items():
        assert after[table] == kept[table] - n, table
    others = call(t.node, "query", "audit:list", {"workspace_id": t.other, "paginationOpts": PAGE}, t.outsider)["page"]
    assert after["corral_audit_log"] == len(others)
    assert call(t.node, "query", "workspaces:list", {}, t.owner) == []
    assert call(t.node, "query", "workspaces:get", {"workspace_id": t.workspace}, t.owner) is None
    other_threads = call(t.node, "query", "threads:list", {"workspace_id": t.other, "paginationOpts": PAGE}, t.outsider)["page"]
    assert [th["title"] for th in other_threads] == ["kept"]
    assert refusal(t.node, "mutation", "workspaces:update", {"workspace_id": t.workspace, "name": "x"}, t.owner)["code"] == "NotFound"


def test_the_scheduler_carries_a_removal_through_to_the_end(short_dir, database_url):
    from ..engine.served import served, wait_until

    with served(short_dir / "data", database_url=database_url) as node:
        t = Tenancy(node)
        for n in range(3):
            call(node, "mutation", "threads:create", {"workspace_id": t.workspace, "title": f"T{n}"}, t.member)
        call(node, "mutation", "workspaces:remove", {"workspace_id": t.workspace}, t.owner)
        wait_until(lambda: counts(node)["corral_workspaces"] == 1, what="the workspace's removal")
        assert counts(node) == {"corral_workspaces": 1, "corral_workspace_members": 1, "corral_invitations": 0,
                                "corral_threads": 0, "corral_audit_log": 1}


def test_a_removed_workspace_leaves_no_run_artifact_or_stored_file(t):
    import asyncio

    from corral.engine.files.file_storage import FileStorage

    thread = call(t.node, "mutation", "threads:create", {"workspace_id": t.workspace}, t.member)
    run = call(t.node, "mutation", "sandbox_runs:create", {"workspace_id": t.workspace, "thread_id": thread}, t.member)
    stored = asyncio.run(t.node.engine.files.store_data(b"result", "text/plain"))
    call(t.node, "mutation", "artifacts:create", {"sandbox_run_id": run, "type": "log", "title": "out", "storage_id": stored,
                                                  "content_type": "text/plain", "size": 6}, t.member)
    call(t.node, "mutation", "workspaces:remove", {"workspace_id": t.workspace}, t.owner)
    steps = []
    while (kind := internal(t.node, "mutation", "workspaces:purge", {"workspace_id": t.workspace})) is not None:
        steps.append(kind)
    assert steps[:2] == ["runs and artifacts", "runs and artifacts"] and steps[-1] == "workspace"
    with t.node.engine.store.snapshot() as (conn, _ts):
        assert (conn.count("corral_sandbox_runs"), conn.count("corral_artifacts")) == (0, 0)
        assert FileStorage.read_record(conn, stored) is None
