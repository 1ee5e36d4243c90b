"""The app's shared argument and field types: enums, name limits, pagination."""

import re
from typing import Annotated, Literal, NotRequired, TypedDict

from annotated_types import Ge, Le, MaxLen, MinLen

from corral import ConvexError

Role = Literal["owner", "admin", "member"]
GrantableRole = Literal["admin", "member"]  # the owner is made by create and transfer_ownership only
WorkspaceStatus = Literal["active", "deleting"]
ThreadStatus = Literal["active", "archived"]

NAME_MAX = 100  # a workspace's name
TITLE_MAX = 200  # a thread's title
EMAIL_MAX = 320
USER_ID_MAX = 512  # a tokenIdentifier: issuer URL | subject
PAGE_MAX = 1000  # paginationOpts.numItems

WorkspaceName = Annotated[str, MinLen(1), MaxLen(NAME_MAX)]
ThreadTitle = Annotated[str, MinLen(1), MaxLen(TITLE_MAX)]
Email = Annotated[str, MinLen(3), MaxLen(EMAIL_MAX)]
UserId = Annotated[str, MinLen(1), MaxLen(USER_ID_MAX)]


class PaginationOpts(TypedDict):
    """What Convex clients send as `paginationOpts` (`usePaginatedQuery` adds `id`)."""

    numItems: Annotated[int, Ge(0), Le(PAGE_MAX)]
    cursor: str | None
    endCursor: NotRequired[str | None]
    id: NotRequired[float]
    maximumRowsRead: NotRequired[float]
    maximumBytesRead: NotRequired[float]


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def invalid(message: str) -> ConvexError:
    return ConvexError({"code": "InvalidArgument", "message": message})


def clean_name(name: str, what: str = "name") -> str:
    """A name without surrounding blanks; refuses one that is only blanks."""
    stripped = name.strip()
    if not stripped:
        raise invalid(f"the {what} is empty: give it at least one character that is not a space")
    return stripped


def normalize_email(email: str) -> str:
    """An email address as profiles and invitations store it (lowercase); refuses what is not one."""
    normalized = email.strip().lower()
    if not _EMAIL.match(normalized):
        raise invalid(f"{email!r} is not an email address (name@example.com)")
    return normalized
