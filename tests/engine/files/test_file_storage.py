"""File storage: upload URLs, downloads, metadata, deletion, limits — on SQLite and PostgreSQL.

What is checked is what a user sees: the bytes that come back, the answers to bad uploads,
and the node's blob directory, which must hold nothing a rejected upload sent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from corral.engine.auth import Caller
from corral.engine.clock import Clock
from corral.engine.errors import FunctionError

from ...conftest import free_port
from ..sync_client import SyncClient

ANON = Caller.anonymous()
MiB = 1 << 20


def call(node: Any, kind: str, path: str, args: dict[str, Any] | None = None) -> Any:
    value, _ts = asyncio.run(node.engine.call(kind, path, args or {}, ANON))
    return value


def stored_files(node: Any) -> list[str]:
    """Every file under the node's blob directory (blobs and uploads in progress), relative names."""
    root = Path(node.engine.files.blobs.root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def settle(node: Any) -> None:
    """Wait for blob collections queued by deletions (they run right after the deleting commit)."""
    asyncio.run(node.engine.files.drain())


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.ready.set()


@pytest.fixture
def make_served(make_node) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """make_served(database_url=None, **settings) → (node, client): an in-process node whose clock
    the test holds, served over real HTTP by uvicorn in a thread, and an HTTP client for it."""
    running: list[tuple[_Server, threading.Thread, httpx.Client]] = []

    def make(database_url: str | None = None, **settings: Any) -> tuple[Any, httpx.Client]:
        node = make_node(database_url, port=free_port(), **settings)
        server = _Server(uvicorn.Config(node.app, host="127.0.0.1", port=node.settings.port, log_level="warning",
                                        lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        assert server.ready.wait(30), "the node did not start serving"
        client = httpx.Client(base_url=node.url, timeout=60)
        running.append((server, thread, client))
        return node, client

    yield make
    for server, thread, client in running:
        client.close()
        server.should_exit = True
        thread.join(timeout=30)


def upload(client: httpx.Client, node: Any, data: Any, content_type: str | None = "application/octet-stream",
           url: str | None = None) -> httpx.Response:
    url = url or call(node, "mutation", "files:upload_url")
    headers = {"content-type": content_type} if content_type else {}
    return client.post(url, content=data, headers=headers)


# -- the round trip -------------------------------------------------------------------

def test_an_uploaded_file_comes_back_byte_identical_with_its_content_type(database_url, make_served):
    node, client = make_served(database_url)
    data = os.urandom(3 * MiB + 17)
    url = call(node, "mutation", "files:upload_url")
    assert url.startswith(node.url + "/api/storage/upload?token=")

    response = upload(client, node, data, "image/png", url=url)
    assert response.status_code == 200
    storage_id = response.json()["storageId"]

    assert call(node, "query", "files:metadata", {"storage_id": storage_id}) == {
        "storageId": storage_id, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "contentType": "image/png"}
    download_url = call(node, "query", "files:url", {"storage_id": storage_id})
    assert download_url == f"{node.url}/api/storage/{storage_id}"
    got = client.get(download_url)
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["content-type"] == "image/png"
    assert int(got.headers["content-length"]) == len(data)
    assert got.headers["digest"] == "sha-256=" + base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert client.get(download_url, headers={"if-none-match": got.headers["etag"]}).status_code == 304
    head = client.head(download_url)
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) == len(data)


def test_text_content_types_are_served_exactly_as_uploaded(make_served):
    node, client = make_served()
    plain = upload(client, node, b"hello", "text/plain").json()["storageId"]
    untyped = upload(client, node, b"\x00\x01", None).json()["storageId"]
    assert client.get(f"/api/storage/{plain}").headers["content-type"] == "text/plain"
    assert call(node, "query", "files:metadata", {"storage_id": untyped})["contentType"] is None
    assert client.get(f"/api/storage/{untyped}").headers["content-type"] == "application/octet-stream"


def test_an_empty_file_can_be_stored(make_served):
    node, client = make_served()
    storage_id = upload(client, node, b"").json()["storageId"]
    assert call(node, "query", "files:metadata", {"storage_id": storage_id})["size"] == 0
    assert client.get(f"/api/storage/{storage_id}").content == b""


def test_missing_files_are_404_and_none(make_served):
    node, client = make_served()
    storage_id = upload(client, node, b"x").json()["storageId"]
    call(node, "mutation", "files:remove", {"storage_id": storage_id})
    for path in (f"/api/storage/{storage_id}", "/api/storage/not-an-id", "/api/storage/" + "a" * 32):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json()["code"] == "NotFound" and response.json()["message"]
    assert call(node, "query", "files:url", {"storage_id": storage_id}) is None
    assert call(node, "query", "files:metadata", {"storage_id": storage_id}) is None
    with pytest.raises(FunctionError, match="does not exist"):
        call(node, "mutation", "files:remove", {"storage_id": storage_id})


def test_a_document_id_is_not_a_storage_id(make_node):
    node = make_node()
    room = call(node, "mutation", "rooms:create", {"name": "r"})
    with pytest.raises(FunctionError, match="storage_id"):
        call(node, "query", "files:url", {"storage_id": room})


# -- content addressing and deletion -----------------------------------------------------

def test_the_same_bytes_are_kept_once_until_no_file_names_them(database_url, make_served):
    node, client = make_served(database_url)
    data = os.urandom(100_000)
    first = upload(client, node, data, "text/csv").json()["storageId"]
    second = upload(client, node, data, "application/octet-stream").json()["storageId"]
    assert first != second
    sha = hashlib.sha256(data).hexdigest()
    assert stored_files(node) == [f"blobs/{sha[:2]}/{sha}"]
    assert call(node, "query", "files:metadata", {"storage_id": second})["contentType"] == "application/octet-stream"

    call(node, "mutation", "files:remove", {"storage_id": first})
    settle(node)
    assert stored_files(node) == [f"blobs/{sha[:2]}/{sha}"]  # the second file still names the bytes
    assert client.get(f"/api/storage/{first}").status_code == 404
    assert client.get(f"/api/storage/{second}").content == data

    call(node, "mutation", "files:remove", {"storage_id": second})
    settle(node)
    assert stored_files(node) == []
    assert client.get(f"/api/storage/{second}").status_code == 404


def test_a_mutation_that_fails_after_deleting_keeps_the_file(database_url, make_served):
    node, client = make_served(database_url)
    storage_id = upload(client, node, b"keep me").json()["storageId"]
    with pytest.raises(FunctionError, match="changed my mind"):
        call(node, "mutation", "files:remove_then_fail", {"storage_id": storage_id})
    settle(node)
    assert client.get(f"/api/storage/{storage_id}").content == b"keep me"
    assert len(stored_files(node)) == 1


def test_bytes_uploaded_again_after_deletion_are_stored_again(database_url, make_served):
    node, client = make_served(database_url)
    first = upload(client, node, b"phoenix").json()["storageId"]
    call(node, "mutation", "files:remove", {"storage_id": first})
    settle(node)
    again = upload(client, node, b"phoenix").json()["storageId"]
    settle(node)
    assert client.get(f"/api/storage/{again}").content == b"phoenix"


def test_deleting_and_uploading_the_same_bytes_at_once_never_loses_a_file(database_url, make_served):
    node, client = make_served(database_url)
    data = b"contended" * 1000

    def remove(storage_id: str) -> None:
        body = client.post("/api/mutation", json={"path": "files:remove", "args": {"storage_id": storage_id}}).json()
        assert body["status"] == "success", body

    def add() -> str:
        url = client.post("/api/mutation", json={"path": "files:upload_url", "args": {}}).json()["value"]
        response = client.post(url, content=data)
        assert response.status_code == 200, response.text
        return str(response.json()["storageId"])

    current = add()
    with ThreadPoolExecutor(2) as pool:
        for _ in range(15):  # the last record naming the bytes is deleted while the same bytes arrive again
            removed = pool.submit(remove, current)
            current = pool.submit(add).result()
            removed.result()
            settle(node)
            assert client.get(f"/api/storage/{current}").content == data
    remove(current)
    settle(node)
    assert stored_files(node) == []


# -- actions ---------------------------------------------------------------------------

def test_actions_store_read_describe_and_delete_files(database_url, make_served):
    node, client = make_served(database_url)
    stored = call(node, "action", "files:store_text", {"text": "from an action", "content_type": "text/plain"})
    assert call(node, "action", "files:read_text", {"storage_id": stored}) == "from an action"
    assert client.get(f"/api/storage/{stored}").content == b"from an action"
    streamed = call(node, "action", "files:store_chunks", {"parts": ["a" * 700_000, "b" * 900_000, "c"]})
    assert client.get(f"/api/storage/{streamed}").content == b"a" * 700_000 + b"b" * 900_000 + b"c"

    described = call(node, "action", "files:describe", {"storage_id": stored})
    assert described["url"] == f"{node.url}/api/storage/{stored}"
    assert described["metadata"] == {"storageId": stored, "sha256": hashlib.sha256(b"from an action").hexdigest(),
                                     "size": 14, "contentType": "text/plain"}
    assert upload(client, node, b"via an action's URL", url=described["upload_url"]).status_code == 200

    call(node, "action", "files:remove_in_action", {"storage_id": stored})
    settle(node)
    assert call(node, "action", "files:read_text", {"storage_id": stored}) is None
    assert client.get(f"/api/storage/{stored}").status_code == 404


def test_an_action_cannot_store_more_than_the_limit(make_node):
    node = make_node(max_upload_bytes=1000)
    with pytest.raises(FunctionError, match="limit of 1,000 bytes"):
        call(node, "action", "files:store_text", {"text": "x" * 1001})
    assert stored_files(node) == []
    assert call(node, "action", "files:read_text",
                {"storage_id": call(node, "action", "files:store_text", {"text": "x" * 1000})}) == "x" * 1000


def test_leftovers_of_interrupted_uploads_are_removed_at_start_once_stale_by_the_engine_clock(tmp_path):
    from corral.node import Node

    from ...conftest import make_settings

    data = tmp_path / "data"
    leftovers = data / "storage" / "tmp"
    leftovers.mkdir(parents=True)
    (leftovers / "upload-cut-short").write_bytes(b"half a file")
    clock = Clock()
    for advance, still_there in ((0.0, True), (3601.0, False)):
        clock.advance(advance)
        node = Node(make_settings(data, storage_stale_upload_age=3600.0), clock=clock)
        node.start()
        try:
            # Young leftovers may be uploads another node sharing the directory is receiving.
            assert (leftovers / "upload-cut-short").exists() is still_there
        finally:
            node.stop()


# -- bad uploads: each refused, nothing kept -----------------------------------------------

def test_an_expired_upload_url_is_refused(database_url, make_served):
    clock = Clock()
    node, client = make_served(database_url, clock=clock, upload_url_lifetime=60.0)
    almost = call(node, "mutation", "files:upload_url")
    late = call(node, "mutation", "files:upload_url")
    clock.advance(59.0)
    assert upload(client, node, b"just in time", url=almost).status_code == 200
    clock.advance(2.0)
    response = upload(client, node, b"too late", url=late)
    assert response.status_code == 403
    assert response.json()["code"] == "UploadUrlExpired" and "60 s" in response.json()["message"]
    sha = hashlib.sha256(b"just in time").hexdigest()
    assert stored_files(node) == [f"blobs/{sha[:2]}/{sha}"]


def test_an_upload_url_works_once(database_url, make_served):
    node, client = make_served(database_url)
    url = call(node, "mutation", "files:upload_url")
    assert upload(client, node, b"first", url=url).status_code == 200
    response = upload(client, node, b"second", url=url)
    assert response.status_code == 403 and response.json()["code"] == "UploadUrlUsed"
    sha = hashlib.sha256(b"first").hexdigest()
    assert stored_files(node) == [f"blobs/{sha[:2]}/{sha}"]


def _tampered(url: str) -> list[str]:
    base, token = url.split("?token=")
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    later = bytearray(raw)
    later[17:25] = (int.from_bytes(raw[17:25], "big") + 86_400_000).to_bytes(8, "big")  # a day more, same signature
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    return [f"{base}?token={base64.urlsafe_b64encode(bytes(later)).decode().rstrip('=')}",
            f"{base}?token={flipped}", f"{base}?token=garbage", f"{base}?token={token[:40]}"]


def test_a_tampered_upload_url_is_refused(database_url, make_served):
    node, client = make_served(database_url)
    url = call(node, "mutation", "files:upload_url")
    for bad in _tampered(url):
        response = upload(client, node, b"sneaky", url=bad)
        assert response.status_code == 403, bad
        assert response.json()["code"] == "InvalidUploadToken"
    missing = client.post("/api/storage/upload", content=b"no token")
    assert missing.status_code == 400 and missing.json()["code"] == "MissingUploadToken"
    assert stored_files(node) == []
    assert upload(client, node, b"genuine", url=url).status_code == 200  # the real URL is still unused


def test_an_upload_url_of_another_deployment_is_refused(make_served):
    (node, client), (other, _) = make_served(), make_served()
    url = call(other, "mutation", "files:upload_url").replace(other.url, node.url)
    response = upload(client, node, b"elsewhere", url=url)
    assert response.status_code == 403 and response.json()["code"] == "InvalidUploadToken"
    assert stored_files(node) == []


def test_a_body_over_the_limit_is_refused(database_url, make_served):
    node, client = make_served(database_url, max_upload_bytes=1000)
    declared = upload(client, node, b"x" * 1001)  # Content-Length over the limit: refused before reading
    assert declared.status_code == 413 and declared.json()["code"] == "UploadTooLarge"
    assert "1,000 bytes" in declared.json()["message"]

    url = call(node, "mutation", "files:upload_url")

    def chunked() -> Iterator[bytes]:  # no Content-Length: refused while streaming
        for _ in range(20):
            yield b"y" * 100

    streamed = upload(client, node, chunked(), url=url)
    assert streamed.status_code == 413 and streamed.json()["code"] == "UploadTooLarge"
    assert stored_files(node) == []
    exact = upload(client, node, b"z" * 1000)
    assert exact.status_code == 200
    assert call(node, "query", "files:metadata", {"storage_id": exact.json()["storageId"]})["size"] == 1000


def test_browsers_on_other_origins_may_upload_and_download(make_served):
    node, client = make_served()
    preflight = client.options("/api/storage/upload?token=x", headers={
        "origin": "https://app.example", "access-control-request-method": "POST",
        "access-control-request-headers": "content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    response = upload(client, node, b"cross-origin")
    assert response.headers["access-control-allow-origin"] == "*"
    got = client.get(f"/api/storage/{response.json()['storageId']}")
    assert got.headers["access-control-allow-origin"] == "*"


# -- live queries and several nodes (nodes in their own processes) ----------------------------
# The database fixture comes first so that it outlives the nodes using it.

def test_a_live_query_of_a_file_follows_its_deletion(database_url, live_node_factory):
    node = live_node_factory(database_url=database_url)
    url = httpx.post(node.url + "/api/mutation", json={"path": "files:upload_url", "args": {}}).json()["value"]
    storage_id = httpx.post(url, content=b"watched", headers={"content-type": "text/plain"}).json()["storageId"]
    client = SyncClient(node.url)
    q = client.subscribe("files:url", {"storage_id": storage_id})
    client.recv_until(lambda m: m["type"] == "Transition" and q in client.results)
    assert client.results[q] == f"{node.url}/api/storage/{storage_id}"
    assert client.mutation("files:remove", {"storage_id": storage_id})["success"]  # returns once its commit is seen
    assert client.results[q] is None
    assert httpx.get(f"{node.url}/api/storage/{storage_id}").status_code == 404


def test_files_and_upload_urls_survive_a_restart(database_url, live_node_factory, tmp_path):
    first = live_node_factory(database_url=database_url, data_dir=tmp_path / "data")
    kept = httpx.post(first.url + "/api/mutation", json={"path": "files:upload_url", "args": {}}).json()["value"]
    url = httpx.post(first.url + "/api/mutation", json={"path": "files:upload_url", "args": {}}).json()["value"]
    stored = httpx.post(kept, content=b"before the restart").json()["storageId"]
    first.stop()
    second = live_node_factory(database_url=database_url, data_dir=tmp_path / "data")
    assert httpx.get(f"{second.url}/api/storage/{stored}").content == b"before the restart"
    after = httpx.post(second.url + url[len(first.url):], content=b"after the restart")  # signed before, used after
    assert after.status_code == 200
    assert httpx.get(f"{second.url}/api/storage/{after.json()['storageId']}").content == b"after the restart"


def test_nodes_on_one_database_accept_each_others_upload_urls(postgres_url, live_node_factory, tmp_path):
    shared = {"CORRAL_STORAGE_DIR": str(tmp_path / "shared-blobs")}
    node_a = live_node_factory(database_url=postgres_url, env=shared)
    node_b = live_node_factory(database_url=postgres_url, env=shared)
    url = httpx.post(node_a.url + "/api/mutation", json={"path": "files:upload_url", "args": {}}).json()["value"]
    assert url.startswith(node_a.url)
    on_b = node_b.url + url[len(node_a.url):]
    storage_id = httpx.post(on_b, content=b"from B", headers={"content-type": "text/plain"}).json()["storageId"]
    got = httpx.get(f"{node_a.url}/api/storage/{storage_id}")
    assert got.content == b"from B" and got.headers["content-type"] == "text/plain"
    again = httpx.post(node_a.url + url[len(node_a.url):], content=b"twice")  # single use across nodes too
    assert again.status_code == 403 and again.json()["code"] == "UploadUrlUsed"


# -- streaming: a 1 GiB file through a node with flat memory ---------------------------------

GiB = 1 << 30
RSS_BOUND_MIB = 300


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def test_a_1_gib_file_streams_through_with_flat_memory(database_url, live_node_factory):
    node = live_node_factory(database_url=database_url)
    block = os.urandom(MiB)
    expected = hashlib.sha256()

    def body() -> Iterator[bytes]:
        for i in range(GiB // MiB):
            chunk = i.to_bytes(8, "big") + block[8:]  # every MiB different, so nothing compresses or repeats
            expected.update(chunk)
            yield chunk

    url = httpx.post(node.url + "/api/mutation", json={"path": "files:upload_url", "args": {}}).json()["value"]
    response = httpx.post(url, content=body(), headers={"content-type": "application/x-tar", "content-length": str(GiB)},
                          timeout=300)
    assert response.status_code == 200, response.text
    storage_id = response.json()["storageId"]
    after_upload = vm_hwm_mib(node.process.pid)

    got = hashlib.sha256()
    size = 0
    with httpx.stream("GET", f"{node.url}/api/storage/{storage_id}", timeout=300) as download:
        assert download.headers["content-type"] == "application/x-tar"
        for chunk in download.iter_bytes():
            got.update(chunk)
            size += len(chunk)
    assert size == GiB and got.hexdigest() == expected.hexdigest()
    peak = vm_hwm_mib(node.process.pid)
    assert peak < RSS_BOUND_MIB, f"the node's peak RSS reached {peak:.0f} MiB (after the upload: {after_upload:.0f} MiB)"
    metadata = httpx.post(node.url + "/api/query", json={"path": "files:metadata", "args": {"storage_id": storage_id},
                                                         "format": "convex_encoded_json"}).json()["value"]
    assert metadata["sha256"] == expected.hexdigest()
    httpx.post(node.url + "/api/mutation", json={"path": "files:remove", "args": {"storage_id": storage_id}})  # free the disk
