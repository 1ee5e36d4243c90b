"""Signed file URLs, as the SDK makes them: `v1_` + unpadded base64 of
sha256("<path>:<read|write>:<user>:<access token>[:<expiration>]")."""

from __future__ import annotations

import base64
import hashlib
import hmac


def signature(path: str, operation: str, user: str, access_token: str, expiration: int | None) -> str:
    raw = f"{path}:{operation}:{user}:{access_token}"
    if expiration is not None:
        raw += f":{expiration}"
    digest = hashlib.sha256(raw.encode("utf-8")).digest()
    return "v1_" + base64.b64encode(digest).rstrip(b"=").decode("ascii")


def matches(given: str, path: str, operation: str, user: str, access_token: str, expiration: int | None) -> bool:
    return hmac.compare_digest(given.encode(), signature(path, operation, user, access_token, expiration).encode())


class TokenBook:
    """Access tokens by sandbox, a cache of the engine's records: a signed URL names no sandbox, so
    the sandbox is the one whose token makes the signature. On a miss the book is reloaded from the
    engine (`reload`), so URLs made before a restart of the node, or by another node, still work."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.tokens: dict[str, str] = {}
        self.max_entries = max_entries

    def remember(self, sandbox_id: str, access_token: str) -> None:
        if sandbox_id not in self.tokens and len(self.tokens) >= self.max_entries:
            self.tokens.pop(next(iter(self.tokens)))
        self.tokens[sandbox_id] = access_token

    def replace(self, pairs: list[tuple[str, str]]) -> None:
        """Hold exactly these (sandbox id, token) pairs (the engine's running and paused sandboxes)."""
        self.tokens = dict(pairs[-self.max_entries:] if len(pairs) > self.max_entries else pairs)

    def forget(self, sandbox_id: str) -> None:
        self.tokens.pop(sandbox_id, None)

    def find(self, given: str, path: str, operation: str, user: str, expiration: int | None) -> tuple[str, str] | None:
        """(sandbox id, token) whose token signs this URL; None when no known sandbox's does."""
        for sandbox_id, token in list(self.tokens.items()):
            if matches(given, path, operation, user, token, expiration):
                return sandbox_id, token
        return None
