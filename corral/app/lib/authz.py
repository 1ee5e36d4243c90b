"""The one place where workspace membership and roles are checked.

A denial says what was missing and never reveals whether another workspace's document exists:
a workspace (or a document in one) that the caller is not a member of gets the same error as an
id that names nothing, and get-queries return null for both.
"""

from __future__ import annotations

from typing import Any

from corral import ConvexError, Id

from ..schema import Operator, Workspace, WorkspaceMember

ROLE_RANK = {"member": 0, "admin": 1, "owner": 2}


def caller_id(ctx: Any) -> str | None:
    """The caller's user id (tokenIdentifier), or None when signed out."""
    identity = ctx.auth.get_user_identity()
    return None if identity is None else str(identity["tokenIdentifier"])


def require_caller(ctx: Any) -> str:
    """The caller's user id; refuses a caller who is signed out."""
    return str(ctx.auth.require_user()["tokenIdentifier"])


def not_found(what: str = "workspace") -> ConvexError:
    """The error for a document that does not exist or that the caller may not see: the same for both."""
    where = "you are not a member of it" if what == "workspace" else "it is in a workspace you are not a member of"
    return ConvexError({"code": "NotFound", "message": f"no such {what}, or {where}"})


def member_of(ctx: Any, workspace_id: Any, user_id: str) -> WorkspaceMember | None:
    """`user_id`'s membership of a workspace, or None."""
    member: WorkspaceMember | None = ctx.db.query(WorkspaceMember).with_index(
        "by_workspace_user", lambda q: q.eq("workspace_id", workspace_id).eq("user_id", user_id)).unique()
    return member


def membership(ctx: Any, workspace_id: Id[Workspace]) -> WorkspaceMember | None:
    """The caller's membership of a workspace, or None (also when signed out)."""
    user_id = caller_id(ctx)
    return None if user_id is None else member_of(ctx, workspace_id, user_id)


def require_member(ctx: Any, workspace_id: Id[Workspace]) -> WorkspaceMember:
    """The caller's membership of an active workspace; NotFound for a non-member or a missing
    workspace alike, WorkspaceDeleting once the workspace is being removed."""
    require_caller(ctx)
    member = membership(ctx, workspace_id)
    if member is None:
        raise not_found()
    workspace = ctx.db.get(workspace_id)
    if workspace is None:
        raise not_found()
    if workspace["status"] != "active":
        raise ConvexError({"code": "WorkspaceDeleting", "message": f"workspace '{workspace['name']}' is being removed"})
    return member


def require_role(ctx: Any, workspace_id: Id[Workspace], role: str) -> WorkspaceMember:
    """The caller's membership if it has at least `role` (owner > admin > member)."""
    member = require_member(ctx, workspace_id)
    if ROLE_RANK[member.role] < ROLE_RANK[role]:
        article = "an" if member.role[0] in "aeiou" else "a"
        raise ConvexError({"code": "Forbidden",
                           "message": f"you are {article} {member.role} of this workspace; this needs the {role} role"})
    return member


def readable(ctx: Any, doc: Any) -> Any:
    """A document of a workspace (it has `workspace_id`) if the caller is a member; None otherwise."""
    if doc is None or membership(ctx, doc["workspace_id"]) is None:
        return None
    return doc


def require_doc(ctx: Any, doc_id: Any, what: str, role: str = "member") -> Any:
    """The document `doc_id` of a workspace where the caller has at least `role`: NotFound when
    it does not exist or is in a workspace the caller is not a member of."""
    require_caller(ctx)
    doc = ctx.db.get(doc_id)
    if doc is None or membership(ctx, doc["workspace_id"]) is None:
        raise not_found(what)
    require_role(ctx, doc["workspace_id"], role)
    return doc


def is_operator(ctx: Any, user_id: str | None) -> bool:
    """Whether `user_id` sees every sandbox and runner: the node's local user, or granted the role."""
    if user_id is None:
        return False
    return ctx.db.query(Operator).with_index("by_user", lambda q: q.eq("user_id", user_id)).first() is not None


def require_operator(ctx: Any) -> str:
    """The caller's user id if the caller is one of the node's operators (the admin key calls the
    internal queries instead: `corral/sandboxes:overview`, `corral/runners:list_all`)."""
    user_id = require_caller(ctx)
    if not is_operator(ctx, user_id):
        raise ConvexError({"code": "Forbidden", "message": "only the node's operators see every sandbox and runner: "
                           "sign in as the node's local user, or ask whoever holds the admin key to run "
                           f"corral run corral/operator:grant '{{\"user_id\": \"{user_id}\"}}'"})
    return user_id


def require_runner_key(ctx: Any) -> str:
    """The id of the runner key calling; refuses every other caller (users, client keys, admin)."""
    identity = ctx.auth.get_user_identity()
    if identity is None or identity.get("keyKind") != "runner":
        raise ConvexError({"code": "Forbidden", "message": "only a runner may call this: start one with "
                           "`corral runner --key KEY`, KEY from `corral api-key create --kind runner`"})
    return str(identity["subject"])
