"""The E2B layer on the wire: Connect framing, envd's HTTP answers and the control REST's errors,
sent by hand where the SDK would never send them (bad input must get a clear error)."""

from __future__ import annotations

import base64
import struct
from typing import Any

import httpx
import orjson
import pytest

from corral.e2b import E2bOptions, connect
from corral.e2b.signing import signature
from corral.fleet import SandboxUnavailable

from .conftest import Served


def _api(served: Served, method: str, path: str, key: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {"X-API-KEY": key or served.api_key, **kwargs.pop("headers", {})}
    return httpx.request(method, served.api_url + path, headers=headers, timeout=30, **kwargs)


def _create(served: Served, **body: Any) -> dict[str, Any]:
    response = _api(served, "POST", "/v2/sandboxes", json={"templateID": "base", "timeout": 60, **body})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def _envd_headers(sandbox: dict[str, Any], **extra: str) -> dict[str, str]:
    return {"E2b-Sandbox-Id": sandbox["sandboxID"], "X-Access-Token": sandbox["envdAccessToken"], **extra}


def _unary(served: Served, sandbox: dict[str, Any], method: str, message: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{served.sandbox_url}/{method}", content=orjson.dumps(message),
                      headers={**_envd_headers(sandbox), "Content-Type": "application/json", **headers}, timeout=30)


def _frames(body: bytes) -> list[tuple[int, dict[str, Any]]]:
    out = []
    while body:
        flags, length = struct.unpack(">BI", body[:5])
        out.append((flags, orjson.loads(body[5:5 + length])))
        body = body[5 + length:]
    return out


def _stream(served: Served, sandbox: dict[str, Any], method: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{served.sandbox_url}/{method}", content=body,
                      headers={**_envd_headers(sandbox), "Content-Type": "application/connect+json", **headers}, timeout=30)


# -- codec ------------------------------------------------------------------------------------------

def test_envelope_round_trip() -> None:
    frame = connect.envelope({"a": 1})
    assert frame[:1] == b"\x00" and struct.unpack(">I", frame[1:5])[0] == len(frame) - 5
    end = connect.end_stream(connect.RpcError("not_found", "gone"))
    assert end[0] == connect.FLAG_END_STREAM
    assert orjson.loads(end[5:]) == {"error": {"code": "not_found", "message": "gone"}}


@pytest.mark.parametrize("raw, message", [
    (b"\x00\x00\x00\x00\x10{}", "ended inside an envelope"),
    (b"\x08\x00\x00\x00\x02{}", "unknown flags"),
    (b"\x01\x00\x00\x00\x02{}", "compressed"),
    (b"\x00\xff\xff\xff\xff", "larger than the limit"),
])
def test_malformed_envelopes_are_refused(raw: bytes, message: str) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        yield raw

    async def read() -> None:
        async for _ in connect.read_envelopes(chunks(), 1 << 20):
            pass

    import asyncio

    with pytest.raises(connect.RpcError, match=message):
        asyncio.run(read())


# -- envd over HTTP ---------------------------------------------------------------------------------

def test_unary_and_stream_calls(served_e2b: Served) -> None:
    sandbox = _create(served_e2b)
    listed = _unary(served_e2b, sandbox, "filesystem.Filesystem/ListDir", {"path": "/home/user", "depth": 1})
    assert listed.status_code == 200 and listed.json() == {"entries": []}
    start = {"process": {"cmd": "/bin/bash", "args": ["-c", "echo hi"]}, "stdin": False}
    response = _stream(served_e2b, sandbox, "process.Process/Start", connect.envelope(start))
    frames = _frames(response.content)
    assert response.headers["content-type"] == "application/connect+json"
    assert "start" in frames[0][1]["event"]
    data = [base64.b64decode(f["event"]["data"]["stdout"]) for _, f in frames if "data" in f.get("event", {})]
    assert b"".join(data) == b"hi\n"
    assert frames[-2][1]["event"]["end"]["exitCode"] == 0
    assert frames[-1] == (connect.FLAG_END_STREAM, {})


def test_keepalives_and_deadline(served_e2b: Served) -> None:
    sandbox = _create(served_e2b)
    start = {"process": {"cmd": "/bin/sh", "args": ["-c", "sleep 30"]}}
    response = _stream(served_e2b, sandbox, "process.Process/Start", connect.envelope(start),
                       **{"Keepalive-Ping-Interval": "0.1", "Connect-Timeout-Ms": "2000"})  # room to start under load
    frames = _frames(response.content)
    assert any("keepalive" in f.get("event", {}) for _, f in frames[1:-1])
    assert frames[-1] == (connect.FLAG_END_STREAM, {"error": {"code": "deadline_exceeded",
                                                               "message": frames[-1][1]["error"]["message"]}})
    assert sandbox["sandboxID"] in served_e2b.fleet.touched  # a stream kept open counts as activity


def test_malformed_envelope_is_a_clear_error_and_harms_nothing(served_e2b: Served) -> None:
    sandbox = _create(served_e2b)
    response = _stream(served_e2b, sandbox, "process.Process/Start", b"\x00\x00\x00\x01\x00{")
    assert response.status_code == 200
    (flags, end), = _frames(response.content)
    assert flags == connect.FLAG_END_STREAM and end["error"]["code"] == "invalid_argument"
    assert "envelope" in end["error"]["message"]
    bad_json = _stream(served_e2b, sandbox, "process.Process/Start", b"\x00\x00\x00\x00\x03[1,")
    assert "not valid JSON" in _frames(bad_json.content)[0][1]["error"]["message"]
    unary = _unary(served_e2b, sandbox, "filesystem.Filesystem/Stat", {"path": 5})
    assert unary.status_code == 400 and unary.json()["code"] == "invalid_argument"
    binary = httpx.post(f"{served_e2b.sandbox_url}/filesystem.Filesystem/Stat", content=b"\x0a\x01x",
                        headers={**_envd_headers(sandbox), "Content-Type": "application/proto"})
    assert binary.status_code == 415 and "JSON codec" in binary.json()["message"]
    unknown = _unary(served_e2b, sandbox, "process.Process/Explode", {})
    assert unknown.json()["code"] == "unimplemented"
    assert _unary(served_e2b, sandbox, "filesystem.Filesystem/Stat", {"path": "/home/user"}).status_code == 200


def test_sandbox_resolution_answers(served_e2b: Served) -> None:
    sandbox = _create(served_e2b)
    health = httpx.get(served_e2b.sandbox_url + "/health", headers=_envd_headers(sandbox))
    assert health.status_code == 204
    wrong = httpx.get(served_e2b.sandbox_url + "/health", headers={**_envd_headers(sandbox), "X-Access-Token": "nope"})
    assert wrong.status_code == 502 and wrong.json()["message"] == "The sandbox was not found"  # as an unknown one
    missing = httpx.get(served_e2b.sandbox_url + "/health", headers={"E2b-Sandbox-Id": "doesnotexist"})
    assert missing.status_code == 502
    assert missing.json() == {"sandboxId": "doesnotexist", "message": "The sandbox was not found", "code": 502}
    by_host = httpx.get(served_e2b.sandbox_url + "/health", headers={
        "Host": f"49983-{sandbox['sandboxID']}.corral.example", "X-Access-Token": sandbox["envdAccessToken"]})
    assert by_host.status_code == 204  # E2B's routing by host name, for SDKs before 2.7 behind a TLS proxy
    no_header = httpx.get(served_e2b.sandbox_url + "/health")
    assert no_header.status_code == 400 and "E2b-Sandbox-Id" in no_header.json()["message"]
    wrong_rpc = _unary(served_e2b, sandbox, "process.Process/List", {}, **{"X-Access-Token": "nope"})
    assert wrong_rpc.status_code == 502


def test_an_outsider_cannot_tell_a_wrong_token_from_an_unknown_sandbox(served_e2b: Served) -> None:
    """Someone without the sandbox's access token (and no API key) probes sandbox ids: a real id with a wrong or
    missing token must answer exactly what an id that does not exist answers, on every data-plane route."""
    from e2b.envd.api import handle_envd_api_exception

    sandbox = _create(served_e2b)
    real, fake = sandbox["sandboxID"], "0" * len(sandbox["sandboxID"])

    def probes(sandbox_id: str, token: str | None) -> list[httpx.Response]:
        headers = {"E2b-Sandbox-Id": sandbox_id, **({"X-Access-Token": token} if token is not None else {})}
        return [
            httpx.get(served_e2b.sandbox_url + "/health", headers=headers),
            httpx.post(f"{served_e2b.sandbox_url}/process.Process/List", content=b"{}",
                       headers={**headers, "Content-Type": "application/json"}),
            httpx.post(f"{served_e2b.sandbox_url}/process.Process/Start", content=b"\x00\x00\x00\x00\x02{}",
                       headers={**headers, "Content-Type": "application/connect+json"}),
            httpx.get(served_e2b.sandbox_url + "/files", params={"path": "/etc/hostname"}, headers=headers),
        ]

    def seen(response: httpx.Response, sandbox_id: str) -> tuple[int, str, str]:
        body = response.text.replace(sandbox_id, "<id>")
        return response.status_code, response.headers.get("content-type", ""), body

    for token in ("nope", "", None):
        for wrong, unknown in zip(probes(real, token), probes(fake, token), strict=True):
            assert seen(wrong, real) == seen(unknown, fake), (wrong.request.url, token)
            assert wrong.status_code == 502
    # What the official SDK makes of it: the same "not running" error for both, and is_running() False.
    wrong_health, unknown_health = probes(real, "nope")[0], probes(fake, "nope")[0]
    said = str(handle_envd_api_exception(wrong_health))
    assert said == str(handle_envd_api_exception(unknown_health))
    assert said.startswith("The sandbox was not found: The sandbox was killed or reached its timeout")
    assert httpx.get(served_e2b.sandbox_url + "/health", headers=_envd_headers(sandbox)).status_code == 204


def test_runner_gone_is_a_clear_error(served_e2b: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox = _create(served_e2b)
    other = _create(served_e2b)
    original = served_e2b.fleet.data_plane

    async def gone(sandbox_id: str, token: str | None):  # type: ignore[no-untyped-def]
        if sandbox_id == sandbox["sandboxID"]:
            raise SandboxUnavailable("runner r1 missed its heartbeats")
        return await original(sandbox_id, token)

    monkeypatch.setattr(served_e2b.fleet, "data_plane", gone)
    response = _unary(served_e2b, sandbox, "process.Process/List", {})
    assert response.status_code == 502 and "not answering" in response.json()["message"]
    assert _unary(served_e2b, other, "process.Process/List", {}).status_code == 200


def test_files_http(served_e2b: Served) -> None:
    sandbox = _create(served_e2b)
    headers = _envd_headers(sandbox)
    files = served_e2b.sandbox_url + "/files"
    parts = [("file", ("/home/user/one.txt", b"1")), ("file", ("/home/user/sub/two.txt", b"22"))]
    uploaded = httpx.post(files, files=parts, headers=headers)
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json() == [{"path": "/home/user/one.txt", "name": "one.txt", "type": "file"},
                               {"path": "/home/user/sub/two.txt", "name": "two.txt", "type": "file"}]
    octet = httpx.post(files, params={"path": "raw.bin"}, content=b"\x00\x01",
                       headers={**headers, "Content-Type": "application/octet-stream"})
    assert octet.json()[0]["path"] == "/home/user/raw.bin"
    import gzip

    zipped = httpx.post(files, params={"path": "z.txt"}, content=gzip.compress(b"unzipped"),
                        headers={**headers, "Content-Type": "application/octet-stream", "Content-Encoding": "gzip"})
    assert zipped.status_code == 200
    assert httpx.get(files, params={"path": "z.txt"}, headers=headers).content == b"unzipped"
    assert httpx.get(files, params={"path": "/home/user/sub/two.txt"}, headers=headers).content == b"22"
    missing = httpx.get(files, params={"path": "/home/user/nope"}, headers=headers)
    assert missing.status_code == 404 and "nope" in missing.json()["message"]
    traversal = httpx.get(files, params={"path": "../../../../../../etc/hostname"}, headers=headers)
    assert traversal.status_code == 404  # resolved inside the sandbox, where there is no such file
    nul = httpx.get(files, params={"path": "/home/user/a\x00b"}, headers=headers)
    assert nul.status_code == 400 and "NUL" in nul.json()["message"]
    metadata = httpx.post(files, params={"path": "m.txt"}, content=b"m",
                          headers={**headers, "Content-Type": "application/octet-stream", "X-Metadata-Owner": "me"})
    assert metadata.status_code == 200, metadata.text
    assert metadata.json()[0]["metadata"] == {"owner": "me"}  # stored as user.e2b.owner, key lowercased
    stat = _unary(served_e2b, sandbox, "filesystem.Filesystem/Stat", {"path": "m.txt"}).json()
    assert stat["entry"]["metadata"] == {"owner": "me"}
    bad_value = httpx.post(files, params={"path": "m2.txt"}, content=b"m",
                           headers={**headers, "Content-Type": "application/octet-stream", "X-Metadata-K": "caf\u00e9".encode()})
    assert bad_value.status_code == 400 and "printable US-ASCII" in bad_value.json()["message"]
    unsigned = httpx.get(served_e2b.url + "/files", params={"path": "/home/user/one.txt"})
    assert unsigned.status_code == 401


def test_upload_over_the_limit(served_e2b: Served) -> None:
    sandbox = _create(served_e2b)
    headers = {**_envd_headers(sandbox), "Content-Type": "application/octet-stream"}
    big = httpx.post(served_e2b.sandbox_url + "/files", params={"path": "big.bin"}, content=b"x" * (3 << 20), headers=headers)
    assert big.status_code == 413 and "limit" in big.json()["message"]
    fits = httpx.post(served_e2b.sandbox_url + "/files", params={"path": "small.bin"}, content=b"x" * 1000, headers=headers)
    assert fits.status_code == 200
    assert _unary(served_e2b, sandbox, "filesystem.Filesystem/Stat", {"path": "big.bin"}).json()["code"] == "not_found"
    other = _create(served_e2b)  # the node goes on creating and serving sandboxes
    assert _unary(served_e2b, other, "process.Process/List", {}).status_code == 200


def test_signed_url_found_by_signature(served_e2b: Served) -> None:
    sandbox = _create(served_e2b)
    httpx.post(served_e2b.sandbox_url + "/files", params={"path": "/home/user/s.txt"}, content=b"signed",
               headers={**_envd_headers(sandbox), "Content-Type": "application/octet-stream"})
    sig = signature("/home/user/s.txt", "read", "", sandbox["envdAccessToken"], None)
    fetched = httpx.get(served_e2b.url + "/files", params={"path": "/home/user/s.txt", "signature": sig})
    assert fetched.content == b"signed"
    as_root = httpx.get(served_e2b.url + "/files", params={"path": "/home/user/s.txt", "signature": sig, "username": "root"})
    assert as_root.status_code == 401


def test_forged_signatures_do_not_make_the_node_reload_tokens_each_time(served_e2b: Served) -> None:
    """A miss reloads the access tokens from the engine; a flood of forged URLs costs one reload per interval."""
    sandbox = _create(served_e2b, timeout=3600)
    fleet = served_e2b.fleet
    served_e2b.api.files.reload_interval = 60.0  # longer than the flood takes, however loaded the machine

    def flood() -> int:
        calls = fleet.access_token_calls
        for n in range(20):
            forged = httpx.get(served_e2b.url + "/files", params={"path": "/home/user/x", "signature": f"v1_forged{n}"})
            assert forged.status_code == 401
        return fleet.access_token_calls - calls

    assert flood() == 1
    served_e2b.clock.advance(60.0)  # the interval has passed: the next miss reloads once more
    assert flood() == 1
    good = signature("/home/user/x", "read", "", sandbox["envdAccessToken"], None)
    assert httpx.get(served_e2b.url + "/files", params={"path": "/home/user/x", "signature": good}).status_code == 404


def test_one_sandbox_cannot_take_every_watcher(served_e2b: Served) -> None:
    greedy, other = _create(served_e2b), _create(served_e2b)
    made = [_unary(served_e2b, greedy, "filesystem.Filesystem/CreateWatcher", {"path": "/home/user"})
            for _ in range(E2bOptions().max_watchers_per_sandbox + 1)]
    assert all(r.status_code == 200 for r in made[:-1])
    assert made[-1].json()["code"] == "resource_exhausted" and "this sandbox" in made[-1].json()["message"]
    assert _unary(served_e2b, other, "filesystem.Filesystem/CreateWatcher", {"path": "/home/user"}).status_code == 200


def test_signed_upload_url_writes_only_its_path(served_e2b: Served) -> None:
    """A multipart part's filename must not redirect an upload signed for one path to another file."""
    sandbox = _create(served_e2b)
    sig = signature("/home/user/in.txt", "write", "", sandbox["envdAccessToken"], None)
    upload = httpx.post(served_e2b.url + "/files", params={"path": "/home/user/in.txt", "signature": sig},
                        files=[("file", ("/home/user/.bashrc", b"evil"))])
    assert upload.status_code == 200, upload.text
    assert upload.json()[0]["path"] == "/home/user/in.txt"
    headers = _envd_headers(sandbox)
    assert httpx.get(served_e2b.sandbox_url + "/files", params={"path": "/home/user/in.txt"}, headers=headers).content == b"evil"
    assert httpx.get(served_e2b.sandbox_url + "/files", params={"path": "/home/user/.bashrc"},
                     headers=headers).status_code == 404


# -- control REST -----------------------------------------------------------------------------------

def test_rest_errors(served_e2b: Served) -> None:
    no_key = httpx.post(served_e2b.api_url + "/v2/sandboxes", json={"templateID": "base"})
    assert no_key.status_code == 401 and no_key.json()["code"] == 401
    assert "E2B_API_KEY" in no_key.json()["message"]
    assert _api(served_e2b, "GET", "/v2/sandboxes", key="e2b_" + "1" * 40).status_code == 401
    revoked = _api(served_e2b, "GET", "/v2/sandboxes", key=served_e2b.revoked_key)
    assert revoked.status_code == 401 and "revoked" in revoked.json()["message"]
    bad_json = _api(served_e2b, "POST", "/v2/sandboxes", content=b"{nope", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["message"]
    for body, words in [({"timeout": 5}, "templateID"), ({"templateID": "base", "timeout": -1}, "negative"),
                        ({"templateID": "base", "timeout": 10**12}, "maximum"),
                        ({"templateID": "base", "timeout": "soon"}, "whole number"),
                        ({"templateID": "base", "metadata": {"a": 1}}, "metadata"),
                        ({"templateID": "base", "mcp": {"x": {}}}, "mcp")]:
        answer = _api(served_e2b, "POST", "/v2/sandboxes", json=body)
        assert answer.status_code == 400 and words in answer.json()["message"], (body, answer.text)
    unknown = _api(served_e2b, "POST", "/sandboxes", json={"templateID": "nope"})
    assert unknown.status_code == 404 and "nope" in unknown.json()["message"]
    for query, words in [({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"), ({"state": "dead"}, "state"),
                         ({"order": "up"}, "order"), ({"metadata": "=&&"}, "metadata")]:
        answer = _api(served_e2b, "GET", "/v2/sandboxes", params=query)
        assert answer.status_code == 400 and words in answer.json()["message"], (query, answer.text)
    assert _api(served_e2b, "GET", "/sandboxes/NOT-AN-ID").status_code == 404
    assert _api(served_e2b, "GET", "/templates").status_code == 404


def test_rest_lifecycle_codes(served_e2b: Served) -> None:
    sandbox = _create(served_e2b, metadata={"k": "v w"})
    sid = sandbox["sandboxID"]
    assert set(sandbox) >= {"templateID", "sandboxID", "clientID", "envdVersion", "envdAccessToken"}
    detail = _api(served_e2b, "GET", f"/sandboxes/{sid}").json()
    assert detail["state"] == "running" and detail["metadata"] == {"k": "v w"}
    assert detail["startedAt"].endswith("Z") and detail["lifecycle"] == {"autoResume": False, "onTimeout": "kill"}
    assert _api(served_e2b, "GET", f"/sandboxes/{sid}", key=served_e2b.other_key).status_code == 404
    assert _api(served_e2b, "POST", f"/sandboxes/{sid}/timeout", json={"timeout": 120}).status_code == 204
    assert _api(served_e2b, "POST", f"/sandboxes/{sid}/connect", json={"timeout": 60}).status_code == 200
    assert _api(served_e2b, "POST", f"/sandboxes/{sid}/resume", json={"timeout": 60}).status_code == 409
    no_memory = _api(served_e2b, "POST", f"/sandboxes/{sid}/pause", json={"memory": False})
    assert no_memory.status_code == 400 and "keeps memory" in no_memory.json()["message"]
    assert _api(served_e2b, "POST", f"/sandboxes/{sid}/pause").status_code == 204
    assert _api(served_e2b, "POST", f"/sandboxes/{sid}/pause").status_code == 409
    assert _api(served_e2b, "POST", f"/sandboxes/{sid}/timeout", json={"timeout": 60}).status_code == 404
    resumed = _api(served_e2b, "POST", f"/v2/sandboxes/{sid}/connect", json={"timeout": 60})
    assert resumed.status_code == 201 and resumed.json()["sandboxID"] == sid
    assert _api(served_e2b, "POST", f"/sandboxes/{sid}/pause").status_code == 204
    assert _api(served_e2b, "POST", f"/sandboxes/{sid}/resume", json={"timeout": 60}).status_code == 201
    metrics = _api(served_e2b, "GET", f"/sandboxes/{sid}/metrics", params={"start": "0"}).json()
    assert metrics and set(metrics[0]) >= {"timestamp", "timestampUnix", "cpuUsedPct", "memTotal", "diskTotal"}
    for params in ({"start": "yesterday"}, {"end": "1.5e9"}):
        refused = _api(served_e2b, "GET", f"/sandboxes/{sid}/metrics", params=params)
        assert refused.status_code == 400 and "must be a time in unix seconds" in refused.json()["message"]
    listed = _api(served_e2b, "GET", "/sandboxes", params={"metadata": "k=v%20w"}).json()
    assert [s["sandboxID"] for s in listed] == [sid]
    assert _api(served_e2b, "DELETE", f"/sandboxes/{sid}").status_code == 204
    assert _api(served_e2b, "DELETE", f"/sandboxes/{sid}").status_code == 404
    assert _api(served_e2b, "GET", f"/sandboxes/{sid}").status_code == 404
