"""Sandboxes: how fast a local sandbox starts, answers, pauses and resumes, and what it costs.

Cases (each N rounds, --quick fewer):
  floor: sh        — `sh -c 'echo x'` spawned from Python, to its first stdout byte;
  floor: bwrap     — `bwrap <the provider's namespaces> sh -c 'echo x'`, to its first stdout byte
                     (new user, pid, mount, ipc, uts and network namespaces; no cgroups, no agent);
  provider create  — `LocalProvider.create()` then `echo x` through the sandbox's agent, to the
                     first stdout byte (cgroups, uid, disk, agent start included);
  command          — `echo x` on a running sandbox, start to exit (round trip);
  pause / resume   — the cgroup freezer, with a busy process inside;
  SDK create       — end to end through the official `e2b` SDK against a node in its own
                     process: `Sandbox.create()` then `commands.run('echo x')` to the first
                     stdout byte (REST, envd over HTTP, the fleet's records in the engine);
  idle memory      — memory charged to an idle sandbox's cgroup (agent + bwrap), mean of K.

Gates on this machine: provider create → first byte p50 ≤ 50 ms, SDK ≤ 150 ms, pause and resume
p50 ≤ 50 ms each. The floors are measured in the same run; ratios compare each case with them.

    python -m bench.sandboxes [--quick] [--json] [--rounds N] [--no-sdk]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from corral.sandbox.local import LocalProvider
from corral.sandbox.protocol import Data, End, ProcessConfig, SandboxSpec

from .common import (
    NodeProcess,
    emit_json,
    engine_version,
    fmt,
    log,
    parse_args,
    percentile,
    print_table,
    verdict,
)

GATE_PROVIDER_MS = 50.0
GATE_SDK_MS = 150.0
GATE_PAUSE_MS = 50.0
ECHO = ProcessConfig(cmd="/bin/sh", args=["-c", "echo x"])
BWRAP_FLOOR = ["bwrap", "--unshare-all", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
               "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--proc", "/proc",
               "--dev", "/dev", "--tmpfs", "/tmp", "--uid", "1000", "--gid", "1000"]
now = time.perf_counter


def ms(values: list[float]) -> tuple[float, float]:
    return percentile(values, 50) * 1000, percentile(values, 99) * 1000


def first_byte(argv: list[str]) -> float:
    """Seconds from spawn to the first byte on stdout."""
    start = now()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.read(1)
    elapsed = now() - start
    proc.stdout.read()
    proc.wait()
    return elapsed


def floors(rounds: int) -> dict[str, list[float]]:
    sh = [first_byte(["sh", "-c", "echo x"]) for _ in range(rounds)]
    bwrap = [first_byte([*BWRAP_FLOOR, "sh", "-c", "echo x"]) for _ in range(rounds)]
    return {"sh": sh, "bwrap": bwrap}


async def provider_cases(root: Path, rounds: int, idle: int) -> dict[str, Any]:
    provider = LocalProvider(root, cgroup_root="corral-bench")
    create: list[float] = []
    command: list[float] = []
    pause: list[float] = []
    resume: list[float] = []
    try:
        for n in range(rounds):
            start = now()
            sandbox = await provider.create(SandboxSpec(sandbox_id=f"bench{n}"))
            async for event in await sandbox.processes.start(ECHO):
                if isinstance(event, Data):
                    create.append(now() - start)
                    break
            for _ in range(3):
                start = now()
                async for event in await sandbox.processes.start(ECHO):
                    if isinstance(event, End):
                        break
                command.append(now() - start)
            await sandbox.processes.start(ProcessConfig(cmd="/bin/sh", args=["-c", "while :; do :; done"]))
            start = now()
            await sandbox.pause()
            pause.append(now() - start)
            start = now()
            await sandbox.resume()
            resume.append(now() - start)
            await sandbox.kill()
        sandboxes = [await provider.create(SandboxSpec(sandbox_id=f"idle{n}")) for n in range(idle)]
        await asyncio.sleep(0.5)  # let the agents settle before reading their memory
        memory = [(await s.metrics()).mem_used for s in sandboxes]
        for sandbox in sandboxes:
            await sandbox.kill()
    finally:
        await provider.close()
    return {"create": create, "command": command, "pause": pause, "resume": resume,
            "idle_mib": sum(memory) / len(memory) / (1 << 20) if memory else float("nan")}


def sdk_case(rounds: int) -> list[float]:
    """Create → first stdout byte through the official SDK, against a node with the local provider."""
    from e2b import Sandbox

    node = NodeProcess.corral(label="corral-sandboxes", extra_env={"CORRAL_SANDBOX_PROVIDER": "local"})
    with node:
        assert node.dir is not None
        key = subprocess.run([sys.executable, "-m", "corral", "api-key", "create", "--data-dir",
                              str(node.dir / "data"), "--name", "bench"], capture_output=True, text=True,
                             check=True).stdout.strip()
        os.environ.update({"E2B_API_URL": f"{node.http_url}/e2b", "E2B_SANDBOX_URL": f"{node.http_url}/envd",
                           "E2B_API_KEY": key})
        Sandbox.create(timeout=60).kill()  # warm the node's code paths and the client's pool
        times: list[float] = []
        for _ in range(rounds):
            first: list[float] = []

            def on_stdout(_line: str, first: list[float] = first) -> None:
                if not first:
                    first.append(now())

            start = now()
            sandbox = Sandbox.create(timeout=60)
            sandbox.commands.run("echo x", on_stdout=on_stdout)
            times.append(first[0] - start)
            sandbox.kill()
        return times


def ratio(value: float, floor: float) -> float:
    return value / floor if floor > 0 else float("nan")


def main(argv: list[str] | None = None) -> None:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--rounds", type=int, default=None, help="rounds per case (default 50, --quick 10)")
        parser.add_argument("--no-sdk", action="store_true", help="skip the end-to-end case through the e2b SDK")

    args = parse_args(__doc__.splitlines()[0], extra, argv)
    rounds = args.rounds or (10 if args.quick else 50)
    idle = 5 if args.quick else 20
    if shutil.which("bwrap") is None:
        raise SystemExit("bench.sandboxes needs bubblewrap: apt-get install bubblewrap")

    log(f"floors: {rounds} spawns of sh and of bwrap")
    floor = floors(rounds)
    root = Path(tempfile.mkdtemp(prefix="corral-bench-sandboxes-"))
    try:
        log(f"provider: {rounds} create/command/pause/resume rounds, {idle} idle sandboxes")
        cases = asyncio.run(provider_cases(root, rounds, idle))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    sdk: list[float] = []
    if not args.no_sdk:
        log(f"SDK: {rounds} creates through the official e2b SDK")
        sdk = sdk_case(rounds)

    sh50, sh99 = ms(floor["sh"])
    bw50, bw99 = ms(floor["bwrap"])
    figures: dict[str, Any] = {"engine": engine_version(), "rounds": rounds,
                               "floor_sh_ms": {"p50": sh50, "p99": sh99},
                               "floor_bwrap_ms": {"p50": bw50, "p99": bw99}}
    rows: list[list[Any]] = [["floor: sh -c 'echo x'", sh50, sh99, "1.0", "-"],
                             ["floor: bwrap … sh -c 'echo x'", bw50, bw99, fmt(ratio(bw50, sh50)), "-"]]
    gates: list[bool] = []

    def add(label: str, key: str, values: list[float], gate: float | None) -> None:
        p50, p99 = ms(values)
        figures[key] = {"p50": p50, "p99": p99, "x_bwrap": ratio(p50, bw50)}
        ok = None if gate is None else p50 <= gate
        if ok is not None:
            gates.append(ok)
            figures[key]["gate_ms"] = gate
            figures[key]["pass"] = ok
        rows.append([label, p50, p99, fmt(ratio(p50, bw50)) + "× bwrap",
                     "-" if gate is None else f"≤ {gate:g} ms {verdict(bool(ok))}"])

    add("provider: create → first byte", "provider_create_first_byte_ms", cases["create"], GATE_PROVIDER_MS)
    add("provider: command round trip", "command_round_trip_ms", cases["command"], None)
    add("provider: pause", "pause_ms", cases["pause"], GATE_PAUSE_MS)
    add("provider: resume", "resume_ms", cases["resume"], GATE_PAUSE_MS)
    if sdk:
        add("SDK: create → first byte", "sdk_create_first_byte_ms", sdk, GATE_SDK_MS)
    figures["idle_sandbox_mib"] = cases["idle_mib"]
    figures["pass"] = all(gates)
    print_table(f"Sandboxes ({rounds} rounds; ms)", ["case", "p50", "p99", "vs floor", "gate"], rows)
    print(f"\nmemory per idle sandbox (cgroup): {fmt(cases['idle_mib'])} MiB")
    print(f"gates: {verdict(all(gates))}")
    if args.json:
        emit_json("sandboxes", figures)


if __name__ == "__main__":
    main()
