"""File storage: upload and download throughput through a node's HTTP endpoints, and its memory.

A 256 MiB file (--quick: 64 MiB) of random bytes on disk is
  uploaded   — `POST /api/storage/upload?token=…` (an upload URL from `files:upload_url`),
               the body sent from the file with Content-Length, the node answering `{storageId}`;
  downloaded — `GET /api/storage/{storageId}`, the body written to a file;
through a Corral node in its own process (SQLite; PostgreSQL too when reachable). Each round
deletes the stored file afterwards (`files:remove`), so every upload stores its bytes anew.

Same-run baseline: `shutil.copyfile` of the same file on the same filesystem (what a copy on
local disk costs, with the file in the page cache as it is for the node), made in every round
just before that round's upload and download; each ratio compares a transfer with the copy of
its own round, and the median ratio is reported. The node also fsyncs each blob before
recording it, which `copyfile` does not: `copyfile + fsync` is shown for reference.

Gate: the node's peak RSS (VmHWM, over its whole life) stays under 200 MiB — the bytes stream
through it, never held whole.

    python -m bench.storage [--quick] [--json] [--rounds N] [--mib N] [--postgres URL|'']
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from .common import (
    CPUS,
    NodeProcess,
    emit_json,
    engine_version,
    fmt,
    log,
    parse_args,
    postgres_available,
    postgres_schema,
    print_table,
    self_cpu_seconds,
    verdict,
)

MiB = 1 << 20
BLOCK = MiB  # client read/write size
RSS_LIMIT_MIB = 200.0
monotonic = time.monotonic


@dataclass
class Case:
    name: str
    backend: str
    seconds: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # throughput ÷ the copy measured in the same round

    def ratio(self) -> float:
        return statistics.median(self.ratios) if self.ratios else float("nan")

    def mb_per_s(self, size: int) -> float:
        return size / statistics.median(self.seconds) / 1e6 if self.seconds else float("nan")

    def best_mb_per_s(self, size: int) -> float:
        return size / min(self.seconds) / 1e6 if self.seconds else float("nan")


def write_source(path: Path, size: int) -> str:
    """A file of random bytes (no two MiB alike); returns its sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        left = size
        while left:
            block = os.urandom(min(BLOCK, left))
            digest.update(block)
            fh.write(block)
            left -= len(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def copy_once(src: Path, dst: Path, case: Case, fsync: bool) -> float:
    """Copy `src` to `dst` (then fsync it, if asked), record the time in `case`; returns the seconds."""
    c0 = self_cpu_seconds()
    t0 = monotonic()
    shutil.copyfile(src, dst)
    if fsync:
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    seconds = monotonic() - t0
    case.seconds.append(seconds)
    case.client_cpu.append(self_cpu_seconds() - c0)
    dst.unlink()
    return seconds


# -- a lean HTTP client (http.client, 1 MiB blocks) -------------------------------------

def call_mutation(port: int, path: str, args: dict[str, Any]) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/api/mutation", body=orjson.dumps({"path": path, "args": args}),
                     headers={"Content-Type": "application/json"})
        body = orjson.loads(conn.getresponse().read())
    finally:
        conn.close()
    if body.get("status") != "success":
        raise RuntimeError(f"{path} failed: {body}")
    return body["value"]


def upload(port: int, url: str, src: Path, size: int) -> str:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600, blocksize=BLOCK)
    try:
        with src.open("rb") as fh:
            conn.request("POST", f"{parts.path}?{parts.query}", body=fh,
                         headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
            response = conn.getresponse()
            body = orjson.loads(response.read())
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"upload failed with {response.status}: {body}")
    return str(body["storageId"])


def download(port: int, storage_id: str, dst: Path) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    received = 0
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    try:
        conn.request("GET", f"/api/storage/{storage_id}")
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"download failed with {response.status}: {response.read()[:300]!r}")
        with dst.open("wb") as fh:
            while n := response.readinto(buffer):
                fh.write(view[:n])
                received += n
    finally:
        conn.close()
    return received


def measure_node(label: str, database: str | None, src: Path, dst: Path, size: int, sha: str, rounds: int,
                 copy: Case, copy_fsync: Case) -> tuple[Case, Case, float, float]:
    """(upload case, download case, idle VmHWM, peak VmHWM) of one node.

    Each round copies the file on disk right before its upload and download: this machine's
    speed drifts (other work shares it), so each transfer is compared with a copy made moments
    before it.
    """
    up, down = Case("upload (POST)", label), Case("download (GET)", label)
    with NodeProcess.corral(database=database, label=f"corral-{label.lower()}") as node:
        idle_rss = node.peak_rss_mb()
        for n in range(rounds):
            copied = copy_once(src, dst, copy, fsync=False)
            copy.ratios.append(1.0)
            copy_fsync.ratios.append(copied / copy_once(src, dst, copy_fsync, fsync=True))
            url = call_mutation(node.port, "files:upload_url", {})
            s0, c0, t0 = node.cpu_seconds(), self_cpu_seconds(), monotonic()
            storage_id = upload(node.port, url, src, size)
            up.seconds.append(monotonic() - t0)
            up.server_cpu.append(node.cpu_seconds() - s0)
            up.client_cpu.append(self_cpu_seconds() - c0)
            up.ratios.append(copied / up.seconds[-1])

            s0, c0, t0 = node.cpu_seconds(), self_cpu_seconds(), monotonic()
            received = download(node.port, storage_id, dst)
            down.seconds.append(monotonic() - t0)
            down.server_cpu.append(node.cpu_seconds() - s0)
            down.client_cpu.append(self_cpu_seconds() - c0)
            down.ratios.append(copied / down.seconds[-1])
            if received != size or (n == 0 and file_sha256(dst) != sha):
                raise RuntimeError(f"{label}: the downloaded file differs from the uploaded one ({received:,} bytes)")
            dst.unlink()
            call_mutation(node.port, "files:remove", {"storage_id": storage_id})
            log(f"{label} round {n + 1}/{rounds}: copyfile {size / copied / 1e6:,.0f} MB/s, upload "
                f"{size / up.seconds[-1] / 1e6:,.0f} MB/s, download {size / down.seconds[-1] / 1e6:,.0f} MB/s, "
                f"node VmHWM {node.peak_rss_mb():,.0f} MiB")
        peak_rss = node.peak_rss_mb()
    return up, down, idle_rss, peak_rss


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mib", type=int, default=None, help="file size in MiB (default 256; --quick: 64)")
    parser.add_argument("--rounds", type=int, default=None, help="uploads and downloads per node (default 3; --quick: 2)")


def main(args: argparse.Namespace) -> int:
    mode = "quick" if args.quick else "full"
    size = (args.mib or (64 if args.quick else 256)) * MiB
    rounds = args.rounds or (2 if args.quick else 3)
    t_start = monotonic()
    load_before = os.getloadavg()
    version_before = engine_version()
    work = Path(tempfile.mkdtemp(prefix="corral-bench-storage-"))
    try:
        src, dst = work / "source.bin", work / "copy.bin"
        log(f"writing a {size // MiB} MiB source file")
        sha = write_source(src, size)
        copy, copy_fsync = Case("shutil.copyfile", "disk"), Case("shutil.copyfile + fsync", "disk")
        cases = [copy, copy_fsync]
        rss: dict[str, tuple[float, float]] = {}
        backends: list[tuple[str, str | None]] = [("SQLite", None)]
        pg_skip = postgres_available(args.postgres)
        if pg_skip is None:
            backends.append(("PostgreSQL", args.postgres))
        else:
            log(f"PostgreSQL case skipped: {pg_skip}")
        for label, base in backends:
            if base is None:
                up, down, idle, peak = measure_node(label, None, src, dst, size, sha, rounds, copy, copy_fsync)
            else:
                with postgres_schema(base) as url:
                    up, down, idle, peak = measure_node(label, url, src, dst, size, sha, rounds, copy, copy_fsync)
            cases += [up, down]
            rss[label] = (idle, peak)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    copy_rate = copy.mb_per_s(size)
    print(f"\nbench.storage ({mode}): a {size // MiB} MiB file of random bytes, {rounds} rounds per node (median "
          f"shown, best in brackets; the copies are made in every round of every node); node and client on one "
          f"machine with {CPUS} cores; client: http.client, 1 MiB blocks")
    rows = []
    for c in cases:
        rate = c.mb_per_s(size)
        rows.append([c.name, c.backend, f"{statistics.median(c.seconds):.2f}", f"{fmt(rate, 0)} ({fmt(c.best_mb_per_s(size), 0)})",
                     f"{c.ratio():.2f}×",
                     f"{statistics.median(c.server_cpu):.2f}" if c.server_cpu else "-",
                     f"{statistics.median(c.client_cpu):.2f}"])
    print_table("throughput (MB/s = 10^6 bytes/s; ÷ copyfile: median over rounds of the ratio to that round's copy)",
                ["case", "where", "seconds", "MB/s", "÷ copyfile",
                                                   "node CPU s", "client CPU s"], rows)

    figures: dict[str, Any] = {"mode": mode, "mib": size // MiB, "rounds": rounds, "cpus": CPUS,
                               "copyfile_mb_s": copy_rate, "copyfile_fsync_mb_s": copy_fsync.mb_per_s(size)}
    ok = True
    print()
    for label, (idle, peak) in rss.items():
        key = label.lower()
        up = next(c for c in cases if c.backend == label and c.name.startswith("upload"))
        down = next(c for c in cases if c.backend == label and c.name.startswith("download"))
        figures[f"{key}_upload_mb_s"] = up.mb_per_s(size)
        figures[f"{key}_download_mb_s"] = down.mb_per_s(size)
        figures[f"{key}_upload_over_copyfile"] = up.ratio()
        figures[f"{key}_download_over_copyfile"] = down.ratio()
        figures[f"{key}_idle_rss_mb"], figures[f"{key}_peak_rss_mb"] = idle, peak
        passed = peak < RSS_LIMIT_MIB
        ok = ok and passed
        figures[f"{key}_rss_gate"] = verdict(passed)
        print(f"Corral {label}: upload {fmt(up.mb_per_s(size), 0)} MB/s = {up.ratio():.2f}× copyfile, "
              f"download {fmt(down.mb_per_s(size), 0)} MB/s = {down.ratio():.2f}× copyfile")
        print(f"  node peak RSS (VmHWM): {peak:,.0f} MiB (at start: {idle:,.0f} MiB) — gate < {RSS_LIMIT_MIB:.0f} MiB: "
              f"{verdict(passed)}")
    figures["wall_seconds"] = monotonic() - t_start
    after = engine_version()
    figures["engine"] = version_before if after == version_before else f"{version_before} → {after}"
    figures["loadavg_before"], figures["loadavg_after"] = load_before[0], os.getloadavg()[0]
    print(f"engine: {figures['engine']}")
    print(f"load average before/after: {load_before[0]:.2f} / {figures['loadavg_after']:.2f}; "
          f"wall time: {figures['wall_seconds']:.0f} s")
    if args.json:
        emit_json("storage", figures)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(parse_args(__doc__.splitlines()[0], _extra)))
