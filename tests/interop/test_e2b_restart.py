"""Signed file URLs outlive the node that made them: the sandbox a signature belongs to is found
from the engine's records, not from a list kept in the node's memory."""

from __future__ import annotations

import urllib.parse
import uuid
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox

from tests.conftest import start_live_node
from tests.sandbox_leftovers import kill_sandboxes_under

from .conftest import start_sandbox_node


def _rebase(url: str, root: str) -> str:
    """The same signed URL on the node's new address (a restart picks a free port here)."""
    parts = urllib.parse.urlsplit(url)
    return root + parts.path + ("?" + parts.query if parts.query else "")


def test_signed_urls_survive_a_node_restart(tmp_path_factory: pytest.TempPathFactory) -> None:
    base: Path = tmp_path_factory.mktemp("rs")  # short: an agent socket path has at most 107 bytes
    node, target = start_sandbox_node(base, "host")
    try:
        with target.environment():
            sbx = Sandbox.create(metadata={"sandbox_test_id": uuid.uuid4().hex}, timeout=300)
            sbx.files.write("kept.txt", "made before the restart")
            download = sbx.download_url("kept.txt")
            upload = sbx.upload_url("sent.txt")
            expiring = sbx.download_url("kept.txt", use_signature_expiration=600)
            assert httpx.get(download).content == b"made before the restart"
        node.stop()
        node = start_live_node(node.data_dir, functions=None, env={"CORRAL_SANDBOX_PROVIDER": "host"})
        fetched = httpx.get(_rebase(download, node.url), timeout=30)
        assert fetched.status_code == 200, fetched.text
        assert fetched.content == b"made before the restart"
        assert httpx.get(_rebase(expiring, node.url), timeout=30).content == b"made before the restart"
        sent = httpx.post(_rebase(upload, node.url), files={"file": ("sent.txt", b"after")}, timeout=30)
        assert sent.status_code == 200, sent.text
        forged = httpx.get(_rebase(download, node.url).replace("kept.txt", "other.txt"), timeout=30)
        assert forged.status_code == 401
        target.url = node.url
        with target.environment():
            again = Sandbox.connect(sbx.sandbox_id)
            assert again.files.read("sent.txt") == "after"
            again.kill()
        gone = httpx.get(_rebase(download, node.url), timeout=30)
        assert gone.status_code == 502 and "was not found" in gone.json()["message"], "a killed sandbox's URLs stop working"
    finally:
        node.stop()
        kill_sandboxes_under(node.data_dir)


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("E2B_DEBUG", raising=False)
