"""Artifacts captured out of a run's real sandbox (local provider) into file storage, reviewed by an
owner or admin, downloaded by members only. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.engine.clock import Clock

from ..runner.harness import fleet_node, run
from .runs_support import PAGE, Runs, require_local_provider
from .tenancy_support import call, code, refusal

LIMIT = 64 * 1024


@pytest.fixture
def runs(short_dir: Path, database_url: str | None) -> Iterator[Runs]:
    require_local_provider()
    with fleet_node(short_dir / "data", database_url=database_url, sandbox_provider="local", clock=Clock(),
                    artifact_max_bytes=LIMIT, artifact_preview_bytes=16) as served:
        yield Runs(served)


def started(runs: Runs, script: str) -> tuple[str, str]:
    run_id = runs.start()
    sandbox_id = runs.run(run_id)["sandbox_id"]
    assert run(runs.served, sandbox_id, script)[0] == 0
    return run_id, sandbox_id


def artifacts(runs: Runs, run_id: str) -> list[dict]:
    page = call(runs.node, "query", "artifacts:list_by_run", {"sandbox_run_id": run_id, "paginationOpts": PAGE}, runs.member)
    return list(page["page"])


def test_capture_copies_a_file_out_with_its_type_and_a_text_preview_and_members_download_it(runs):
    run_id, _ = started(runs, "printf 'print(\"hello, world\")\\n' > /home/user/main.py; printf '\\x89PNG\\r\\n' > /tmp/p.png")
    artifact_id = runs.act("artifacts:capture", {"sandbox_run_id": run_id, "path": "main.py"}, runs.member)
    art = call(runs.node, "query", "artifacts:get", {"artifact_id": artifact_id}, runs.member)
    assert art["type"] == "code" and art["content_type"] == "text/x-python" and art["size"] == 22
    assert art["title"] == "main.py" and art["sandbox_path"] == "/home/user/main.py" and art["review_state"] == "pending"
    assert art["preview_text"] == 'print("hello, wo'  # artifact_preview_bytes
    assert "storage_id" not in art  # bytes are never public
    image = call(runs.node, "query", "artifacts:get", {"artifact_id": runs.act(
        "artifacts:capture", {"sandbox_run_id": run_id, "path": "/tmp/p.png", "title": "Plot"}, runs.member)}, runs.member)
    assert image["type"] == "image" and image["preview_text"] is None and image["title"] == "Plot"
    got = runs.act("artifacts:download", {"artifact_id": artifact_id}, runs.owner)
    assert got["data"] == b'print("hello, world")\n' and got["content_type"] == "text/x-python"
    assert code(runs.act_refusal("artifacts:download", {"artifact_id": artifact_id}, runs.outsider)) == "NotFound"
    assert call(runs.node, "query", "artifacts:get", {"artifact_id": artifact_id}, runs.outsider) is None
    assert code(runs.act_refusal("artifacts:capture", {"sandbox_run_id": run_id, "path": "main.py"}, runs.outsider)) == "NotFound"


def test_a_signed_url_downloads_for_members_until_it_expires_and_a_tampered_one_gets_nothing(runs):
    import httpx

    run_id, _ = started(runs, "printf 'a,b\\n1,2\\n' > '/home/user/résumé data.csv'")
    artifact_id = runs.act("artifacts:capture", {"sandbox_run_id": run_id, "path": "résumé data.csv"}, runs.member)
    assert code(runs.act_refusal("artifacts:download_url", {"artifact_id": artifact_id}, runs.outsider)) == "NotFound"
    made = runs.act("artifacts:download_url", {"artifact_id": artifact_id}, runs.member)
    assert made["url"].startswith(runs.served.url + "/api/corral/artifacts/download?token=")
    assert made["expires_at"] == pytest.approx(runs.clock.now_ms() + 300_000, abs=1000)  # artifact_url_ttl
    got = httpx.get(made["url"])  # no credentials: the URL is the credential, for a while
    assert got.status_code == 200 and got.content == b"a,b\n1,2\n"
    assert got.headers["content-type"].startswith("text/csv")
    assert got.headers["content-disposition"] == \
        "attachment; filename=\"r_sum_ data.csv\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20data.csv"
    token = made["url"].split("token=", 1)[1]
    artifact, expires, mac = httpx.QueryParams("t=" + token)["t"].split(".")
    other_id = runs.act("artifacts:capture", {"sandbox_run_id": run_id, "path": "/home/user/résumé data.csv",
                                              "title": "other"}, runs.member)
    base = runs.served.url + "/api/corral/artifacts/download"
    for forged in (f"{other_id}.{expires}.{mac}", f"{artifact}.{int(expires) + 3_600_000}.{mac}",
                   f"{artifact}.{expires}.{mac[:-2]}AA", f"{artifact}.{expires}", "garbage", "x" * 500):
        refused = httpx.get(base, params={"token": forged})
        assert refused.status_code in (400, 403) and refused.json()["code"] == "InvalidDownloadUrl", forged
        assert b"1,2" not in refused.content
    missing = httpx.get(base)
    assert missing.status_code == 400 and missing.json()["code"] == "MissingDownloadToken"
    runs.clock.advance(301)
    expired = httpx.get(made["url"])
    assert expired.status_code == 403 and expired.json()["code"] == "DownloadUrlExpired" and b"1,2" not in expired.content
    assert runs.act("artifacts:download", {"artifact_id": artifact_id}, runs.member)["data"] == b"a,b\n1,2\n"  # still there


@pytest.mark.parametrize("path", ["/etc/passwd", "../../etc/passwd", "/home/user/../../etc/shadow", "/proc/self/environ",
                                  "/home/userx/file"])
def test_a_path_outside_the_sandboxs_files_is_refused_and_nothing_is_written(runs, path):
    run_id, _ = started(runs, "true")
    files = stored_files(runs)
    error = runs.act_refusal("artifacts:capture", {"sandbox_run_id": run_id, "path": path}, runs.member)
    assert error["code"] == "InvalidPath" and "outside the sandbox's files" in error["message"]
    assert artifacts(runs, run_id) == [] and stored_files(runs) == files


def test_a_file_over_the_size_limit_or_missing_is_refused_and_nothing_is_stored(runs):
    run_id, _ = started(runs, f"head -c {LIMIT + 1} /dev/zero > /home/user/big.bin")
    files = stored_files(runs)
    error = runs.act_refusal("artifacts:capture", {"sandbox_run_id": run_id, "path": "big.bin"}, runs.member)
    assert error["code"] == "FileTooLarge" and f"{LIMIT:,}" in error["message"] and "nothing was stored" in error["message"]
    error = runs.act_refusal("artifacts:capture", {"sandbox_run_id": run_id, "path": "nope.txt"}, runs.member)
    assert error["code"] == "FileNotFound"
    error = runs.act_refusal("artifacts:capture", {"sandbox_run_id": run_id, "path": "/home/user"}, runs.member)
    assert error["code"] == "InvalidPath"
    assert artifacts(runs, run_id) == []
    assert stored_files(runs) == files  # not a byte of it kept


def test_review_is_for_owners_and_admins_records_who_when_why_and_is_audited(runs):
    run_id, _ = started(runs, "echo done > /home/user/out.log")
    artifact_id = runs.act("artifacts:capture", {"sandbox_run_id": run_id, "path": "out.log"}, runs.member)
    pending = call(runs.node, "query", "artifacts:list_pending", {"workspace_id": runs.workspace, "paginationOpts": PAGE}, runs.member)
    assert [a["_id"] for a in pending["page"]] == [artifact_id] and pending["page"][0]["type"] == "log"
    for who in (runs.member, runs.outsider):
        error = refusal(runs.node, "mutation", "artifacts:update_review_state",
                        {"artifact_id": artifact_id, "review_state": "approved"}, who)
        assert code(error) in ("Forbidden", "NotFound")
    error = refusal(runs.node, "mutation", "artifacts:update_review_state",
                    {"artifact_id": artifact_id, "review_state": "maybe"}, runs.admin)
    assert "expected one of 'pending', 'approved', 'rejected'" in str(error)
    assert call(runs.node, "query", "artifacts:get", {"artifact_id": artifact_id}, runs.member)["reviews"] == []
    runs.clock.advance(5)
    approved = call(runs.node, "mutation", "artifacts:update_review_state",
                    {"artifact_id": artifact_id, "review_state": "approved", "comment": "looks right"}, runs.admin)
    assert approved["review_state"] == "approved"
    assert approved["reviews"] == [{"by": "https://issuer.test|adm", "at": pytest.approx(runs.clock.now_ms(), abs=1000),
                                    "comment": "looks right", "state": "approved"}]
    again = refusal(runs.node, "mutation", "artifacts:update_review_state",
                    {"artifact_id": artifact_id, "review_state": "approved"}, runs.owner)
    assert again["code"] == "InvalidTransition" and "already approved" in again["message"]
    assert call(runs.node, "query", "artifacts:list_pending", {"workspace_id": runs.workspace, "paginationOpts": PAGE},
                runs.member)["page"] == []
    assert "artifact.approved" in [e["action"] for e in runs.audit()]


def test_create_needs_a_stored_file_and_a_known_type(runs):
    run_id, _ = started(runs, "true")
    base = {"sandbox_run_id": run_id, "title": "x", "content_type": "text/plain", "size": 1}
    error = refusal(runs.node, "mutation", "artifacts:create", {**base, "type": "file", "storage_id": "nope"}, runs.member)
    assert error["code"] == "InvalidArgument"
    error = refusal(runs.node, "mutation", "artifacts:create", {**base, "type": "movie", "storage_id": "nope"}, runs.member)
    assert "expected one of 'file', 'image', 'code', 'log', 'other'" in str(error)
    error = refusal(runs.node, "mutation", "artifacts:create", {**base, "sandbox_run_id": runs.workspace, "type": "file",
                                                                "storage_id": "nope"}, runs.member)
    assert "corral_sandbox_runs" in str(error)  # an id of another table
    assert artifacts(runs, run_id) == []


def test_removing_a_workspaces_runs_leaves_no_document_stored_file_or_sandbox(runs):
    from corral.engine.auth import Caller

    from ..engine.served import wait_until
    from ..runner.harness import held_state, on_loop

    run_id, sandbox_id = started(runs, "echo kept > /home/user/a.txt")
    artifact_id = runs.act("artifacts:capture", {"sandbox_run_id": run_id, "path": "a.txt"}, runs.member)
    storage_id = on_loop(runs.served, runs.node.engine.call_query("corral/artifacts:stored", {"artifact_id": artifact_id},
                                                                  runs.owner, internal_ok=True))["storage_id"]
    assert stored_record(runs, storage_id) is not None
    other_run, other_sandbox = started(runs, "true")
    runs.act("workspace_keys:create_api_key", {"workspace_id": runs.workspace, "name": "k"}, runs.owner)
    outside_run = runs.start(runs.outsider, workspace_id=runs.other, thread_id=runs.other_thread)
    batches = 1  # as workspaces:purge drives it: one transaction at a time until it says it is done
    while not on_loop(runs.served, runs.node.engine.call_mutation(
            "corral/sandbox_runs:remove_batch", {"workspace_id": runs.workspace}, Caller.admin(), internal_ok=True)):
        batches += 1
    assert batches >= 2  # artifacts, then runs and what else the workspace held
    assert runs.served.call("query", "corral/sandbox_runs:lookup", {"sandbox_run_id": run_id}) is None
    assert runs.served.call("query", "corral/sandbox_runs:lookup", {"sandbox_run_id": other_run}) is None
    assert call(runs.node, "query", "artifacts:get", {"artifact_id": artifact_id}, runs.owner) is None
    assert stored_record(runs, storage_id) is None
    assert call(runs.node, "query", "workspace_keys:list_api_keys", {"workspace_id": runs.workspace}, runs.owner) == []
    for sandbox_id_ in (sandbox_id, other_sandbox):
        assert runs.sandbox(sandbox_id_)["state"] == "killed"
        wait_until(lambda s=sandbox_id_: held_state(runs.served, s) is None, what="the runner killing the sandbox")
    # Another workspace's run is untouched.
    assert runs.run(outside_run, runs.outsider)["status"] == "running"
    call(runs.node, "mutation", "sandbox_runs:cancel", {"sandbox_run_id": outside_run}, runs.outsider)


def stored_record(runs: Runs, storage_id: str):  # type: ignore[no-untyped-def]
    """The file storage's record of a stored file (None once it is deleted)."""
    with runs.node.engine.store.snapshot() as (conn, _ts):
        return runs.node.engine.files.read_record(conn, storage_id)


def stored_files(runs: Runs) -> int:
    """How many files the node's file storage holds."""
    with runs.node.engine.store.snapshot() as (conn, _ts):
        return int(conn.execute("SELECT COUNT(*) FROM _storage").fetchone()[0])
