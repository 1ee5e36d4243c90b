"""A sandbox's writable disk: a sparse ext4 image file, loop-mounted on the host.

The image caps home and /tmp together at the sandbox's disk size, survives a host reboot
(a paused sandbox resumes from it), and is charged to the disk rather than to memory. A
pristine image per size is made once with mkfs.ext4 and copied sparsely for each sandbox
(a few hundred kilobytes); loop devices are configured and mounted with direct syscalls to
keep create fast. See docs/adr/0009-local-provider.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
MS_NOSUID = 2
MS_NODEV = 4
MS_NOATIME = 1024
MNT_DETACH = 2
# struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]; }
# struct loop_info64: 5 u64, 4 u32 (lo_flags last), file name[64], crypt name[64], key[32], u64 init[2]
_LOOP_INFO64 = "=5Q4I64s64s32s2Q"
_LOOP_CONFIG = "=2I" + _LOOP_INFO64[1:] + "8Q"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class DiskError(Exception):
    pass


def _errno_error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def pristine_image(images_dir: Path, size_mb: int) -> Path:
    """The empty ext4 image of `size_mb` megabytes, made on first use."""
    path = images_dir / f"ext4-{size_mb}m.img"
    if path.exists():
        return path
    images_dir.mkdir(parents=True, exist_ok=True)
    tmp = images_dir / f".ext4-{size_mb}m.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    mkfs = shutil.which("mkfs.ext4") or "/usr/sbin/mkfs.ext4"
    result = subprocess.run(
        [mkfs, "-q", "-F", "-m", "0", "-L", "corral-disk",
         "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0", str(tmp)],
        capture_output=True, text=True)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise DiskError(f"mkfs.ext4 failed: {result.stderr.strip()} (install e2fsprogs)")
    os.replace(tmp, path)
    return path


def copy_sparse(source: Path, dest: Path) -> None:
    """Copy only the allocated extents of `source` (an image is mostly holes)."""
    src = os.open(source, os.O_RDONLY)
    try:
        dst = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            size = os.fstat(src).st_size
            os.ftruncate(dst, size)
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(src, offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # only a hole remains
                        break
                    raise
                end = os.lseek(src, start, os.SEEK_HOLE)
                pos = start
                while pos < end:
                    n = os.copy_file_range(src, dst, end - pos, pos, pos)
                    if n == 0:
                        break
                    pos += n
                offset = end
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _attach_loop(image: Path) -> tuple[int, str]:
    """Attach `image` to a free loop device with autoclear; returns (open fd, device path)."""
    img = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(64):
                number = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
                device = f"/dev/loop{number}"
                for _wait in range(200):  # a new device node appears through devtmpfs
                    try:
                        dev = os.open(device, os.O_RDWR | os.O_CLOEXEC)
                        break
                    except FileNotFoundError:
                        time.sleep(0.001)
                else:
                    raise DiskError(f"{device} did not appear")
                config = struct.pack(_LOOP_CONFIG, img, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                     LO_FLAGS_AUTOCLEAR, b"", b"", b"", 0, 0, *([0] * 8))
                try:
                    fcntl.ioctl(dev, LOOP_CONFIGURE, config)
                    return dev, device
                except OSError as exc:
                    os.close(dev)
                    if exc.errno == errno.EBUSY:  # taken by someone else meanwhile
                        continue
                    raise
            raise DiskError("no free loop device (64 attempts)")
        finally:
            os.close(ctl)
    finally:
        os.close(img)


def mount_image(image: Path, target: Path) -> None:
    """Loop-mount `image` (ext4) at `target`, nosuid and nodev; the loop device frees itself on unmount."""
    dev, device = _attach_loop(image)
    try:
        flags = MS_NOSUID | MS_NODEV | MS_NOATIME
        if _libc.mount(device.encode(), str(target).encode(), b"ext4", flags, None) != 0:
            raise _errno_error(f"mount {device} on {target}")
    finally:
        os.close(dev)  # autoclear: the device detaches when the mount goes


def mount_tmpfs(target: Path, size_mb: int, name: str) -> None:
    """A tmpfs of `size_mb` at `target` (nosuid, nodev, mode 0711), named `name` in the mount table."""
    options = f"size={size_mb}m,mode=0711".encode()
    if _libc.mount(name.encode(), str(target).encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options) != 0:
        raise _errno_error(f"mount a tmpfs on {target}")


def is_mounted(target: Path) -> bool:
    wanted = str(target)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == wanted for line in f)


def unmount(target: Path) -> None:
    """Detach the mount at `target` (lazily: it is gone from the mount table at once)."""
    if _libc.umount2(str(target).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):  # not mounted
            return
        raise _errno_error(f"umount {target}")


def syncfs(target: Path) -> None:
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(AttributeError):
            _libc.syncfs(fd)
    finally:
        os.close(fd)


def usage(target: Path) -> tuple[int, int]:
    """(used, total) bytes of the filesystem at `target`."""
    st = os.statvfs(target)
    total = st.f_blocks * st.f_frsize
    return total - st.f_bfree * st.f_frsize, total
