"""The core calls, run by an older `e2b` SDK in its own virtual environment (test_e2b_sdk_generations.py).

Usage: python e2b_core_scenario.py   (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY set)
Prints one JSON line per step to stderr and a final {"ok": true} to stdout; exits 1 at the first
failure, naming the step. Written for every SDK from 2.0 on: no newer syntax or API.

SDKs before 2.7 read no E2B_SANDBOX_URL: they reach envd at https://49983-<id>.<domain>, which
needs TLS and wildcard DNS in front of Corral. Here, as docs/sandboxes.md shows, a small
subclass points them at E2B_SANDBOX_URL and names the sandbox in the E2b-Sandbox-Id header.
"""

import json
import os
import sys
import time
import traceback
import uuid

import e2b
from e2b import Sandbox

try:
    from e2b import CommandExitException
except ImportError:  # pragma: no cover - every 2.x has it
    from e2b.sandbox.commands.command_handle import CommandExitException

try:
    from e2b import SandboxQuery as Query
except ImportError:
    from e2b import SandboxListQuery as Query  # type: ignore[attr-defined,no-redef]

VERSION = tuple(int(p) for p in e2b.__version__.split(".")[:2]) if hasattr(e2b, "__version__") else (0, 0)


def sdk_version() -> tuple:
    try:
        from importlib.metadata import version

        return tuple(int(p) for p in version("e2b").split(".")[:2])
    except Exception:  # noqa: BLE001
        return VERSION


OLD = sdk_version() < (2, 7)

if OLD:
    class CorralSandbox(Sandbox):  # type: ignore[misc,valid-type]
        def __init__(self, **opts):  # type: ignore[no-untyped-def]
            config = opts["connection_config"]
            config._ConnectionConfig__extra_sandbox_headers["E2b-Sandbox-Id"] = opts["sandbox_id"]
            super().__init__(**opts)

        @property
        def envd_api_url(self) -> str:
            return os.environ["E2B_SANDBOX_URL"]

    Sandbox = CorralSandbox  # type: ignore[misc]


def step(name: str, **details: object) -> None:
    sys.stderr.write(json.dumps({"step": name, **details}) + "\n")
    sys.stderr.flush()


def eventually(check, what: str, within: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(what + " did not happen")
        time.sleep(0.05)


def count(sbx) -> int:  # type: ignore[no-untyped-def]
    """The counter's value; 0 while the loop is between truncating the file and writing it."""
    return int(sbx.files.read("count").strip() or 0)


def main() -> None:
    test_id = uuid.uuid4().hex
    step("create", sdk=".".join(map(str, sdk_version())))
    sbx = Sandbox.create(metadata={"sandbox_test_id": test_id}, envs={"GREETING": "hi"}, timeout=120)
    try:
        step("command")
        assert sbx.commands.run("echo $GREETING").stdout == "hi\n"
        step("exit code")
        try:
            sbx.commands.run("exit 4")
            raise AssertionError("exit 4 raised nothing")
        except CommandExitException as exc:
            assert exc.exit_code == 4
        step("background and kill")
        handle = sbx.commands.run("sleep 600", background=True)
        assert sbx.commands.kill(handle.pid)
        step("files")
        sbx.files.write("scenario.txt", "written")
        assert sbx.files.read("scenario.txt") == "written"
        assert "scenario.txt" in [e.name for e in sbx.files.list(".")]
        step("counter")
        sbx.commands.run("i=0; while true; do i=$((i+1)); echo $i > $HOME/count; date +%s.%N >> $HOME/ticks; "
                         "sleep 0.05; done", background=True)
        eventually(lambda: sbx.files.exists("count") and count(sbx) > 3, "counting")
        step("list")
        paginator = Sandbox.list(query=Query(metadata={"sandbox_test_id": test_id}))
        listed = paginator.next_items() if hasattr(paginator, "next_items") else paginator
        assert [s.sandbox_id for s in listed] == [sbx.sandbox_id], listed
        step("pause")
        (sbx.beta_pause if hasattr(sbx, "beta_pause") and not hasattr(sbx, "pause") else sbx.pause)()
        frozen_from = time.time()  # wall clock, as `date` in the sandbox reads it
        assert not sbx.is_running()
        time.sleep(0.5)
        frozen_until = time.time()
        step("connect")
        again = Sandbox.connect(sbx.sandbox_id)
        at_resume = count(again)
        during = [t for t in map(float, again.files.read("ticks").split()) if frozen_from < t < frozen_until]
        assert not during, f"the counter ran while paused: {during}"
        eventually(lambda: count(again) > at_resume, "counting again")
        assert again.commands.run("echo back").stdout == "back\n"
        step("info")
        info = Sandbox.get_info(sbx.sandbox_id) if hasattr(Sandbox, "get_info") else again.get_info()
        assert info.metadata["sandbox_test_id"] == test_id
        step("set timeout")
        again.set_timeout(200)
    finally:
        step("kill")
        sbx.kill()
    assert not sbx.is_running()
    sys.stdout.write(json.dumps({"ok": True}) + "\n")


if __name__ == "__main__":
    try:
        main()
    except Exception:  # noqa: BLE001 - reported to the test, which shows the steps
        traceback.print_exc()
        sys.exit(1)
