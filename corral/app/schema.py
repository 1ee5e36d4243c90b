"""Every table of Corral's own, in one place."""

from typing import Literal

from corral import Id, Table, index


class Workspace(Table, name="workspaces"):
    name: str
    owner_id: str
    indexes = [index("by_owner", "owner_id")]


class WorkspaceMember(Table, name="workspace_members"):
    workspace_id: Id[Workspace]
    user_id: str
    role: Literal["owner", "admin", "member"]
    indexes = [index("by_user", "user_id"), index("by_workspace_user", "workspace_id", "user_id")]
