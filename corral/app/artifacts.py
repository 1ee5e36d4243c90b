"""Artifacts: files a run produced, captured from its sandbox, reviewed by a person. Found as
`corral/artifacts:<name>`.

An artifact's bytes are in file storage and reach members only through `download` or a
short-lived signed URL from `download_url` (lib/artifact_urls.py); its storage id is never
returned, so no public storage URL is made for it."""

from __future__ import annotations

import mimetypes
import posixpath
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

from annotated_types import Ge, MaxLen, MinLen

from corral import (
    ActionCtx,
    ConvexError,
    Id,
    MutationCtx,
    QueryCtx,
    action,
    internal_mutation,
    internal_query,
    mutation,
    query,
)
from corral.engine.files import is_storage_id

from .lib import artifact_urls, audit_log, authz
from .lib.run_ends import workspace_owner
from .lib.run_limits import policy
from .schema import Artifact, ArtifactType, ArtifactUrlKey, ReviewState, SandboxRun, Workspace

Title = Annotated[str, MinLen(1), MaxLen(200)]
SandboxPath = Annotated[str, MinLen(1), MaxLen(4096)]
HOME = "/home/user"
CAPTURABLE = (HOME, "/tmp")  # the sandbox's own files: its writable home and /tmp
CODE_EXTENSIONS = frozenset({".py", ".js", ".mjs", ".ts", ".tsx", ".jsx", ".go", ".rs", ".c", ".h", ".cc", ".cpp", ".hpp",
                             ".java", ".kt", ".rb", ".php", ".sh", ".bash", ".sql", ".swift", ".scala", ".cs", ".lua",
                             ".r", ".pl", ".toml", ".yaml", ".yml", ".ini", ".cfg", ".css", ".html", ".diff", ".patch"})
TEXT_TYPES = ("application/json", "application/xml", "application/javascript", "application/x-sh", "application/toml",
              "application/yaml", "application/x-yaml")
PRIVATE_FIELDS = ("storage_id",)


def public_view(doc: Any) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in PRIVATE_FIELDS}


def sandbox_path(path: str) -> str:
    """The absolute path of `path` in the sandbox; InvalidPath when it is outside its own files."""
    if "\x00" in path:
        raise ConvexError({"code": "InvalidPath", "message": "a path may not contain NUL"})
    full = posixpath.normpath(path if path.startswith("/") else posixpath.join(HOME, path))
    if not any(full == root or full.startswith(root + "/") for root in CAPTURABLE):
        raise ConvexError({"code": "InvalidPath", "message": f"{path!r} is outside the sandbox's files: capture a file "
                           f"under {HOME} or /tmp"})
    return full


def kind_of(path: str, content_type: str) -> str:
    """The artifact type a file's name and content type suggest."""
    ext = posixpath.splitext(path)[1].lower()
    if content_type.startswith("image/"):
        return "image"
    if ext == ".log":
        return "log"
    if ext in CODE_EXTENSIONS:
        return "code"
    return "file"


def is_text(content_type: str, head: bytes) -> bool:
    if content_type.startswith("text/") or content_type in TEXT_TYPES:
        return True
    if content_type != "application/octet-stream" or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3  # only a character cut at the end of the preview
    return True


# -- for members ----------------------------------------------------------------------------------

@mutation
def create(ctx: MutationCtx, sandbox_run_id: Id[SandboxRun], type: ArtifactType, title: Title, storage_id: str,  # noqa: A002 - the API's name
           content_type: Annotated[str, MinLen(1), MaxLen(200)], size: Annotated[int, Ge(0)],
           sandbox_path: SandboxPath | None = None, preview_text: Annotated[str, MaxLen(65_536)] | None = None) -> Id[Artifact]:
    """An artifact of a run, review state `pending` (members)."""
    run = authz.require_doc(ctx, sandbox_run_id, "sandbox run")
    if not is_storage_id(storage_id) or ctx.storage.get_metadata(storage_id) is None:
        raise ConvexError({"code": "InvalidArgument", "message": f"no stored file has the id {storage_id[:40]!r}: "
                           "upload the file first (ctx.storage or an upload URL)"})
    artifact_id: Id[Artifact] = ctx.db.insert(Artifact(
        workspace_id=run["workspace_id"], sandbox_run_id=sandbox_run_id, type=type, title=title, storage_id=storage_id,
        content_type=content_type, size=size, sandbox_path=sandbox_path, preview_text=preview_text, review_state="pending",
        reviews=[], created_by=authz.require_caller(ctx)))
    return artifact_id


@query
def get(ctx: QueryCtx, artifact_id: Id[Artifact]) -> dict[str, Any] | None:
    doc = authz.readable(ctx, ctx.db.get(artifact_id))
    return None if doc is None else public_view(doc)


@query
def list_by_run(ctx: QueryCtx, sandbox_run_id: Id[SandboxRun], paginationOpts: dict[str, Any]) -> dict[str, Any]:  # noqa: N803 - Convex's name
    authz.require_doc(ctx, sandbox_run_id, "sandbox run")
    result = ctx.db.query(Artifact).with_index("by_run", lambda q: q.eq("sandbox_run_id", sandbox_run_id)).order("desc").paginate(paginationOpts)
    result["page"] = [public_view(d) for d in result["page"]]
    return result


@query
def list_pending(ctx: QueryCtx, workspace_id: Id[Workspace], paginationOpts: dict[str, Any]) -> dict[str, Any]:  # noqa: N803
    """The review queue: a workspace's pending artifacts, oldest first."""
    authz.require_member(ctx, workspace_id)
    result = ctx.db.query(Artifact).with_index(
        "by_workspace_review", lambda q: q.eq("workspace_id", workspace_id).eq("review_state", "pending")).paginate(paginationOpts)
    result["page"] = [public_view(d) for d in result["page"]]
    return result


@mutation
def update_review_state(ctx: MutationCtx, artifact_id: Id[Artifact], review_state: ReviewState,
                        comment: Annotated[str, MaxLen(2000)] | None = None) -> dict[str, Any]:
    """Approve or reject an artifact, or put it back to pending (owner or admin); who, when and why are kept."""
    doc = authz.require_doc(ctx, artifact_id, "artifact", role="admin")
    if doc["review_state"] == review_state:
        raise ConvexError({"code": "InvalidTransition", "message": f"artifact {artifact_id} is already {review_state}"})
    user = authz.require_caller(ctx)
    review = {"by": user, "at": float(ctx.now), "comment": comment, "state": review_state}
    ctx.db.patch(artifact_id, {"review_state": review_state, "reviews": [*doc["reviews"], review]})
    audit_log.record(ctx, doc["workspace_id"], f"artifact.{review_state}", str(artifact_id),
                     {"review_state": doc["review_state"]}, {"review_state": review_state, "comment": comment})
    return public_view(ctx.db.get(artifact_id))


@action
async def capture(ctx: ActionCtx, sandbox_run_id: Id[SandboxRun], path: SandboxPath, type: ArtifactType | None = None,  # noqa: A002
                  title: Title | None = None) -> Id[Artifact]:
    """Copy a file out of the run's sandbox into file storage (streaming, up to artifact_max_bytes),
    as a pending artifact; its type and content type inferred, a preview kept when it is text."""
    target = await ctx.run_query("corral/artifacts:capture_target", {"sandbox_run_id": sandbox_run_id})
    full = sandbox_path(path)
    if not target["sandbox_id"]:
        raise ConvexError({"code": "SandboxNotFound", "message": f"sandbox run {sandbox_run_id} has no sandbox to capture from"})
    owner = workspace_owner(target["workspace_id"])
    limit, preview_bytes = int(target["max_bytes"]), int(target["preview_bytes"])
    entry = await ctx.sandboxes.stat(owner, target["sandbox_id"], full)
    if entry.type != "file":
        raise ConvexError({"code": "InvalidPath", "message": f"{full} is a directory: capture a file"})
    if entry.size > limit:
        raise ConvexError({"code": "FileTooLarge", "message": f"{full} is {entry.size:,} bytes, over the limit of "
                           f"{limit:,} (setting artifact_max_bytes); nothing was stored"})
    content_type = mimetypes.guess_type(full)[0] or "application/octet-stream"
    head = bytearray()
    size = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal size
        async for chunk in ctx.sandboxes.read_file(owner, target["sandbox_id"], full):
            size += len(chunk)
            if size > limit:
                raise ConvexError({"code": "FileTooLarge", "message": f"{full} grew past the limit of {limit:,} bytes "
                                   "(setting artifact_max_bytes) while it was read; nothing was stored"})
            if len(head) < preview_bytes:
                head.extend(chunk[:preview_bytes - len(head)])
            yield chunk

    storage_id = await ctx.storage.store(chunks(), content_type)
    text = is_text(content_type, bytes(head))
    if content_type == "application/octet-stream" and text:
        content_type = "text/plain"
    preview = bytes(head).decode("utf-8", errors="ignore") if text else None
    try:
        artifact_id: Id[Artifact] = await ctx.run_mutation("corral/artifacts:create", {
            "sandbox_run_id": sandbox_run_id, "type": type or kind_of(full, content_type),
            "title": title or posixpath.basename(full), "storage_id": storage_id, "content_type": content_type,
            "size": size, "sandbox_path": full, "preview_text": preview})
    except BaseException:
        await ctx.storage.delete(storage_id)
        raise
    return artifact_id


@action
async def download(ctx: ActionCtx, artifact_id: Id[Artifact]) -> dict[str, Any]:
    """An artifact's bytes, for members: {title, content_type, size, data}."""
    found = await ctx.run_query("corral/artifacts:stored", {"artifact_id": artifact_id})
    data = await ctx.storage.get(found["storage_id"])
    if data is None:
        raise ConvexError({"code": "NotFound", "message": f"the stored file of artifact {artifact_id} is gone"})
    return {"title": found["title"], "content_type": found["content_type"], "size": len(data), "data": data}


@action
async def download_url(ctx: ActionCtx, artifact_id: Id[Artifact]) -> dict[str, Any]:
    """A URL that downloads the artifact's bytes, for members: {url, expires_at, title, content_type, size};
    it works for anyone who has it until `expires_at` (the artifact_url_ttl setting), then never again."""
    found = await ctx.run_query("corral/artifacts:stored", {"artifact_id": artifact_id})
    file_url = await ctx.storage.get_url(found["storage_id"])
    if file_url is None:
        raise ConvexError({"code": "NotFound", "message": f"the stored file of artifact {artifact_id} is gone"})
    secret = await ctx.run_query("corral/artifacts:url_key", {})
    if secret is None:  # the deployment's first: drawn here, as mutations draw no randomness
        secret = await ctx.run_mutation("corral/artifacts:keep_url_key", {"secret": secrets.token_hex(32)})
    expires = int(ctx.now + found["url_ttl"])
    origin = file_url.split("/api/storage/", 1)[0]  # the node's URL, as file storage URLs have it
    return {"url": artifact_urls.url(origin, artifact_urls.sign(secret, str(artifact_id), expires)), "expires_at": expires,
            "title": found["title"], "content_type": found["content_type"], "size": found["size"]}


# -- for the actions above, as their caller ---------------------------------------------------------

@internal_query
def capture_target(ctx: QueryCtx, sandbox_run_id: Id[SandboxRun]) -> dict[str, Any]:
    """The run's workspace and sandbox if the caller is a member; NotFound otherwise."""
    run = authz.require_doc(ctx, sandbox_run_id, "sandbox run")
    pol = policy(ctx)
    return {"workspace_id": run["workspace_id"], "sandbox_id": run["sandbox_id"], "max_bytes": pol.artifact_max_bytes,
            "preview_bytes": pol.artifact_preview_bytes}


@internal_query
def stored(ctx: QueryCtx, artifact_id: Id[Artifact]) -> dict[str, Any]:
    doc = authz.require_doc(ctx, artifact_id, "artifact")
    return {"storage_id": doc["storage_id"], "title": doc["title"], "content_type": doc["content_type"],
            "size": doc["size"], "url_ttl": policy(ctx).artifact_url_ttl}


@internal_query
def url_key(ctx: QueryCtx) -> str | None:
    doc = ctx.db.query(ArtifactUrlKey).first()
    return None if doc is None else str(doc["secret"])


@internal_mutation
def keep_url_key(ctx: MutationCtx, secret: Annotated[str, MinLen(64), MaxLen(64)]) -> str:
    """Keep the deployment's signing key unless another node kept one first; returns the one kept."""
    doc = ctx.db.query(ArtifactUrlKey).first()
    if doc is not None:
        return str(doc["secret"])
    if not artifact_urls.is_hex_key(secret):
        raise ConvexError({"code": "InvalidArgument", "message": "the signing key is 32 bytes in hex"})
    ctx.db.insert(ArtifactUrlKey(secret=secret))
    return secret


@internal_query
def resolve_download(ctx: QueryCtx, token: Annotated[str, MaxLen(artifact_urls.TOKEN_MAX)]) -> dict[str, Any]:
    """What a signed download URL names: {storage_id, title, content_type}; refused when the token
    is forged, altered or expired (by the engine's clock), or its artifact is gone."""
    key = ctx.db.query(ArtifactUrlKey).first()
    artifact_id = artifact_urls.check("" if key is None else str(key["secret"]), token, float(ctx.now))
    normalized = ctx.db.normalize_id(Artifact, artifact_id)
    doc = None if normalized is None else ctx.db.get(normalized)
    if doc is None:
        raise ConvexError({"code": "NotFound", "message": "this artifact no longer exists"})
    return {"storage_id": doc["storage_id"], "title": doc["title"], "content_type": doc["content_type"]}
