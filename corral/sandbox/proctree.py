"""A process and its descendants, read from /proc: what the host provider pauses, kills, measures.

The agent is a child subreaper, so everything a sandbox starts stays under it even when its
parent dies: the tree rooted at the agent is the sandbox.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    state: str  # R, S, D, T (stopped), Z (zombie)…
    cpu_ticks: int  # utime + stime, plus the same of reaped children
    start_ticks: int  # since boot: with the pid, names a process across pid reuse
    rss_bytes: int


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 of proc(5): state; 4 ppid; 14-17 utime stime cutime cstime; 22 starttime; 24 rss
    return ProcStat(pid=pid, ppid=int(fields[1]), state=fields[0],
                    cpu_ticks=sum(int(v) for v in fields[11:15]), start_ticks=int(fields[19]),
                    rss_bytes=int(fields[21]) * PAGE_SIZE)


def snapshot() -> dict[int, ProcStat]:
    found: dict[int, ProcStat] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                found[stat.pid] = stat
    return found


def tree(root: int) -> list[ProcStat]:
    """`root` and every live descendant (zombies left out), root first; empty when root is gone."""
    table = snapshot()
    if root not in table:
        return []
    children: dict[int, list[int]] = {}
    for stat in table.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    result: list[ProcStat] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        stat = table[pid]
        if stat.state != "Z":
            result.append(stat)
        todo.extend(children.get(pid, []))
    return result


def is_alive(pid: int, start_ticks: int) -> bool:
    stat = read_stat(pid)
    return stat is not None and stat.start_ticks == start_ticks and stat.state != "Z"


def send(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def stop_tree(root: int, settle: float = 2.0) -> None:
    """SIGSTOP the root, then its descendants, until a pass finds nothing new to stop; then wait
    (at most `settle` seconds) until the kernel shows each of them stopped: a signal is delivered
    only when its process next runs, so right after the kill(2) it may still be running."""
    stopped: set[int] = set()
    for _ in range(20):
        fresh = [s.pid for s in tree(root) if s.pid not in stopped]
        if not fresh:
            break
        for pid in fresh:
            send(pid, signal.SIGSTOP)
            stopped.add(pid)
    deadline = time.monotonic() + settle
    for pid in stopped:
        while time.monotonic() < deadline:
            stat = read_stat(pid)
            if stat is None or stat.state in ("T", "t", "Z", "X"):
                break
            time.sleep(0.0005)


def continue_tree(root: int) -> None:
    for stat in tree(root):
        send(stat.pid, signal.SIGCONT)


def kill_descendants(root: int) -> bool:
    """SIGKILL every live descendant of a (stopped) root; True when none is left."""
    rest = [s.pid for s in tree(root) if s.pid != root]
    for pid in rest:
        send(pid, signal.SIGKILL)
    return not rest


def boot_id() -> str:
    """This boot's id: processes and frozen memory from another boot are gone."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()
