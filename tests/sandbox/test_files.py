"""Files in a host sandbox: round trips, listing, errors, watches."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.sandbox.protocol import (
    FileExists,
    FileNotFound,
    Files,
    InvalidPath,
    WatchEvent,
)

from .conftest import HostBox, run


async def chunks(data: bytes, size: int = 100_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read_all(files: Files, path: str) -> bytes:
    return b"".join([chunk async for chunk in files.read(path)])


def test_binary_round_trip_of_five_mebibytes(root: Path) -> None:
    async def scenario() -> None:
        async with HostBox(root) as sandbox:
            data = os.urandom(5 * 1024 * 1024)
            entry = await sandbox.files.write("deep/er/blob.bin", chunks(data))
            assert (entry.name, entry.type, entry.size) == ("blob.bin", "file", len(data))
            assert entry.path == str(sandbox.home / "deep/er/blob.bin")
            assert await read_all(sandbox.files, "deep/er/blob.bin") == data
            assert await read_all(sandbox.files, entry.path) == data  # absolute paths too
            await sandbox.files.write("deep/er/blob.bin", chunks(b"short"))  # replaced, not appended
            assert await read_all(sandbox.files, "deep/er/blob.bin") == b"short"
            await sandbox.files.write("empty", chunks(b""))
            assert await read_all(sandbox.files, "empty") == b""

    run(scenario())


def test_stat_list_rename_remove(root: Path) -> None:
    async def scenario() -> None:
        async with HostBox(root) as sandbox:
            files = sandbox.files
            await files.write("a/one.txt", chunks(b"1"))
            await files.write("a/b/two.txt", chunks(b"22"))
            await files.write("a/b/c/three.txt", chunks(b"333"))
            entry = await files.stat("a/b/two.txt")
            assert (entry.type, entry.size, entry.permissions) == ("file", 2, "-rw-r--r--")
            assert (await files.stat("a")).type == "dir"
            assert [e.name for e in await files.list("a")] == ["b", "one.txt"]
            deep = await files.list("a", depth=2)
            assert sorted(os.path.relpath(e.path, sandbox.home / "a") for e in deep) == [
                "b", "b/c", "b/two.txt", "one.txt"]
            moved = await files.rename("a/one.txt", "z/uno.txt")
            assert moved.path == str(sandbox.home / "z/uno.txt")
            assert await read_all(files, "z/uno.txt") == b"1"
            with pytest.raises(FileNotFound):
                await files.stat("a/one.txt")
            await files.remove("a")  # recursive
            with pytest.raises(FileNotFound):
                await files.list("a")
            await files.remove("z/uno.txt")
            assert [e.name for e in await files.list("z")] == []

    run(scenario())


def test_errors_say_what_was_wrong(root: Path) -> None:
    async def scenario() -> None:
        async with HostBox(root) as sandbox:
            files = sandbox.files
            made = await files.make_dir("new/dir")
            assert made.type == "dir"
            with pytest.raises(FileExists, match="new/dir"):
                await files.make_dir("new/dir")
            with pytest.raises(FileNotFound, match="missing.txt"):
                await files.stat("missing.txt")
            with pytest.raises(FileNotFound):
                await read_all(files, "missing.txt")
            with pytest.raises(FileNotFound):
                await files.remove("missing.txt")
            with pytest.raises(FileNotFound):
                await files.rename("missing.txt", "other.txt")
            with pytest.raises(InvalidPath, match="directory"):
                await read_all(files, "new")
            with pytest.raises(InvalidPath, match="directory"):
                await files.write("new/dir", chunks(b"x"))
            with pytest.raises(InvalidPath):
                await files.list("")
            await files.write("plain", chunks(b"x"))
            with pytest.raises(InvalidPath, match="not a directory"):
                await files.list("plain")

    run(scenario())


async def next_events(events: AsyncIterator[WatchEvent], wanted: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Read watch events until every wanted (name, type) was seen."""
    seen: set[tuple[str, str]] = set()
    async for event in events:
        seen.add((event.name, event.type))
        if wanted <= seen:
            return seen
    raise AssertionError(f"watch ended; saw {seen}, wanted {wanted}")


def test_watch_sees_create_write_remove(root: Path) -> None:
    async def scenario() -> None:
        async with HostBox(root) as sandbox:
            files = sandbox.files
            await files.make_dir("watched/sub")
            flat = files.watch("watched")
            deep = files.watch("watched", recursive=True)
            await flat.ready
            await deep.ready
            await files.write("watched/new.txt", chunks(b"hello"))
            await files.write("watched/sub/inner.txt", chunks(b"x"))
            await files.remove("watched/new.txt")
            assert await next_events(flat, {("new.txt", "create"), ("new.txt", "write"), ("new.txt", "remove")})
            assert ("sub/inner.txt", "create") in await next_events(deep, {("sub/inner.txt", "create")})
            await flat.aclose()
            await deep.aclose()
            await files.make_dir("watched/later")  # a directory made after the watch began is watched too
            deep = files.watch("watched", recursive=True)
            await deep.ready
            await files.make_dir("watched/later/again")
            await files.write("watched/later/again/f", chunks(b"x"))
            await next_events(deep, {("later/again", "create"), ("later/again/f", "create")})
            await deep.aclose()

    run(scenario())


def test_watch_of_a_missing_directory_fails(root: Path) -> None:
    async def scenario() -> None:
        async with HostBox(root) as sandbox:
            watch = sandbox.files.watch("nowhere")
            with pytest.raises(FileNotFound):
                await watch.ready
            await sandbox.files.write("file", chunks(b""))
            with pytest.raises(InvalidPath):
                await sandbox.files.watch("file").ready
            await asyncio.sleep(0)

    run(scenario())
