"""Who calls the E2B API, and as which sandbox user envd acts.

The control API takes an API key (`X-API-KEY: e2b_…`, what the SDK sends) or a user token
(`Authorization: Bearer <JWT>`). A sandbox belongs to the caller that created it: its owner is
the caller's `tokenIdentifier` (`api-key|<key id>` for a key, `issuer|subject` for a user,
`workspace|<workspace id>` for a workspace's key: its sandboxes are the workspace's).
"""

from __future__ import annotations

import base64
import binascii
import re

from starlette.requests import Request

from ..engine.auth import Authenticator, Caller, MachineKey, UserIdentity
from ..engine.auth.api_keys import KEY_RE, hash_secret
from ..engine.errors import CorralError, Unauthenticated
from ..engine.runtime import Engine
from .connect import invalid
from .shapes import ApiError

USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
DEFAULT_USER = "user"


async def owner_of(request: Request, authenticator: Authenticator) -> str:
    """The owner string of the calling key or user; ApiError 401/403 when there is none."""
    headers = request.headers
    if not headers.get("authorization") and headers.get("x-api-key") is None:
        raise ApiError(401, "missing API key: send it in the X-API-KEY header (set E2B_API_KEY for the SDK); "
                            "create one with `corral api-key create` or `corral e2b env`")
    try:
        caller = await authenticator.from_headers(headers)
    except CorralError as exc:
        raise ApiError(401, exc.message) from None
    refusal = caller.refusal(request.url.path, for_runners=False)
    if refusal is not None:
        raise ApiError(403, refusal)
    if caller.identity is None:
        raise ApiError(401, "the E2B API needs an API key or a user token, not the admin key alone")
    return str(caller.identity["tokenIdentifier"])


def envd_user(request: Request) -> str:
    """The sandbox user of an envd call: `Authorization: Basic base64("<user>:")`, else `user`."""
    header = request.headers.get("authorization")
    if not header:
        return DEFAULT_USER
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return DEFAULT_USER
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise invalid("the Authorization header must be Basic base64(\"<user>:\")") from None
    user = decoded.partition(":")[0]
    return check_user(user or DEFAULT_USER)


def check_user(user: str) -> str:
    if not USER_RE.match(user):
        raise invalid(f"{user[:40]!r} is not a valid user name")
    return user


WORKSPACE_KEY_KIND = "workspace"


class WorkspaceKeys:
    """API keys scoped to one workspace (corral/workspace_keys), beside the deployment's own.

    `attach` wraps an authenticator's key checks: a key that is not one of the deployment's is
    looked up among the workspace keys, and its caller is `workspace|<workspace id>` — the owner
    of that workspace's sandboxes, so every E2B call and listing with it reaches those only."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def attach(self, authenticator: Authenticator) -> None:
        deployment_key, deployment_revalidate = authenticator.verify_api_key, authenticator.revalidate

        async def verify(secret: str) -> Caller:
            try:
                if deployment_key is None:
                    raise Unauthenticated("this node does not accept API keys")
                return await deployment_key(secret)
            except Unauthenticated:
                if not KEY_RE.match(secret):
                    raise
                found = await self._lookup({"hash": hash_secret(secret)})
                if found is None:
                    raise
            return workspace_caller(found)

        async def revalidate(caller: Caller) -> None:
            if caller.machine is not None and caller.machine.kind == WORKSPACE_KEY_KIND:
                found = await self._lookup({"key_id": caller.machine.id})
                if found is None:
                    raise Unauthenticated("this workspace API key no longer exists")
                workspace_caller(found)
                return
            if deployment_revalidate is not None:
                await deployment_revalidate(caller)

        authenticator.verify_api_key = verify
        authenticator.revalidate = revalidate

    async def _lookup(self, args: dict[str, str]) -> dict[str, object] | None:
        found: dict[str, object] | None = await self.engine.call_query("corral/workspace_keys:verify", args,
                                                                       Caller.admin(), internal_ok=True)
        return found


def workspace_caller(found: dict[str, object]) -> Caller:
    """The caller of a workspace key; Unauthenticated when it was revoked (or its workspace removed)."""
    if found["revoked"] is not None:
        raise Unauthenticated(f"the workspace API key '{found['name']}' ({found['hint']}) was revoked; an owner or admin "
                              "of the workspace can create a new one")
    identity = UserIdentity()
    identity["tokenIdentifier"] = str(found["owner"])
    identity["subject"] = str(found["id"])
    identity["issuer"] = WORKSPACE_KEY_KIND
    identity["name"] = str(found["name"])
    identity["keyKind"] = WORKSPACE_KEY_KIND
    machine = MachineKey(id=str(found["id"]), name=str(found["name"]), kind=WORKSPACE_KEY_KIND)
    return Caller(identity=identity, key="apikey:" + machine.id, machine=machine)
