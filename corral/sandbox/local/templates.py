"""Templates of the local provider: `base` (the host's userland) and named root directories.

The registry is a JSON file in the provider's root. Each template gets a generated `/etc`:
an allowlist of the files a userland needs (dynamic loader config, certificates, shell
profile, locale and time zone data), copied from the template's own /etc, plus generated
passwd, group, hosts, hostname, resolv.conf and nsswitch.conf naming only `root` and `user`
(uid 1000). Secrets never pass: no shadow, gshadow, ssh host keys, ssl private keys or
service configuration.

    from corral.sandbox.local import templates
    templates.add(root, "py312", Path("/srv/rootfs/py312"))   # `corral template add py312 --rootfs DIR`
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..protocol import TemplateNotFound

BASE = "base"
REGISTRY = "templates.json"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")

# Top-level entries of the host's root shown in the `base` template (the rest of / is not).
BASE_ENTRIES = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# Top-level entries of a template root never shown (replaced by the sandbox's own, or host-only).
HIDDEN_ENTRIES = frozenset({"etc", "home", "tmp", "proc", "dev", "sys", "run", "root", "mnt", "media",
                            "boot", "lost+found", "var", ".corral"})

# What passes from a template's /etc into the sandbox's: files and directories by relative path.
ETC_ALLOW = (
    "alternatives", "bash.bashrc", "bash_completion", "bash_completion.d", "ca-certificates.conf",
    "debian_version", "environment", "gai.conf", "host.conf", "inputrc", "issue", "ld.so.cache",
    "ld.so.conf", "ld.so.conf.d", "locale.alias", "locale.conf", "locale.gen", "localtime", "login.defs",
    "magic", "magic.mime", "mime.types", "networks", "os-release", "profile", "profile.d", "protocols",
    "python3", "python3.11", "rpc", "services", "shells", "skel", "ssl/certs", "ssl/openssl.cnf",
    "timezone", "vim", "wgetrc", "xdg", "gitconfig", "pip.conf", "npmrc", "lsb-release", "manpath.config",
    "default/locale", "java-17-openjdk",
)
# Never copied, even if an allowed directory contains them.
ETC_DENY = re.compile(r"(^|/)(shadow|gshadow|sudoers|ssh|private|.*\.key|.*_key|.*\.pem\.key)(-|$|/)")

PASSWD = ("root:x:0:0:root:/root:/bin/bash\n"
          "user:x:1000:1000::/home/user:/bin/bash\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
GROUP = "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n"
HOSTNAME = "sandbox"
HOSTS = f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
RESOLV = "nameserver 10.0.2.3\n"  # slirp4netns's DNS forwarder; unreachable without internet
NSSWITCH = ("passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n"
            "protocols: files\nservices: files\nethers: files\nrpc: files\n")


ROOTFS_HOWTO = (
    "A template root needs /bin/bash and /bin/sh (a usrmerge /bin -> usr/bin link is fine) and the libraries they "
    "load. Make one with `debootstrap --variant=minbase bookworm DIR` (Debian), or unpack a container image: "
    "`docker export $(docker create python:3.12-slim) | tar -x -C DIR`.")
MAX_LINKS = 40


def resolve_in(rootfs: Path, path: str) -> Path | None:
    """Where `path` of a sandbox's view leads inside `rootfs`, following symlinks as the sandbox would
    (absolute targets stay inside `rootfs`); None when it does not exist or loops."""
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = rootfs.joinpath(*resolved, part)
        if candidate.is_symlink():
            links += 1
            if links > MAX_LINKS:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        if not os.path.lexists(candidate):
            return None
        resolved.append(part)
    return rootfs.joinpath(*resolved)


def is_executable_in(rootfs: Path, path: str) -> bool:
    found = resolve_in(rootfs, path)
    return found is not None and found.is_file() and bool(found.stat().st_mode & 0o111)


@dataclass(frozen=True)
class Template:
    name: str
    rootfs: Path  # "/" for base: only BASE_ENTRIES of it are shown
    etc: Path  # the generated /etc

    @property
    def is_base(self) -> bool:
        return self.name == BASE

    def entries(self) -> list[str]:
        """Top-level entries of the root view, besides /etc and the sandbox's own mounts."""
        if self.is_base:
            return [e for e in BASE_ENTRIES if os.path.lexists(self.rootfs / e)]
        return sorted(e for e in os.listdir(self.rootfs) if e not in HIDDEN_ENTRIES)


def _registry(root: Path) -> dict[str, str]:
    try:
        data = json.loads((root / REGISTRY).read_text())
    except FileNotFoundError:
        return {}
    return {str(k): str(v) for k, v in data.items()}


def _etc_dir(root: Path, name: str, etc_root: Path | None) -> Path:
    return (etc_root or root / "templates") / name / "etc"


def add(root: Path, name: str, rootfs: Path) -> Path:
    """Register (or replace) template `name` from the root directory `rootfs`; its resolved path.

    `root` holds the registry. The provider generates the template's /etc when it first uses it
    (`get`), where its sandboxes can reach it; `rootfs` and its parents must be searchable by them.
    """
    if not NAME_RE.match(name) or name == BASE:
        raise ValueError(f"template name {name!r} is not allowed: use lowercase letters, digits, '-', '_' "
                         f"or '.', at most 63 characters, and not {BASE!r}")
    rootfs = rootfs.resolve()
    if not rootfs.is_dir():
        raise ValueError(f"{rootfs} is not a directory: give the root of an unpacked filesystem")
    if rootfs == Path("/"):
        raise ValueError("the host's / is not a template: use the base template")
    if not any((rootfs / d).exists() for d in ("usr", "bin")):
        raise ValueError(f"{rootfs} has neither usr/ nor bin/: it does not look like a root filesystem. {ROOTFS_HOWTO}")
    missing = [path for path in ("/bin/bash", "/bin/sh") if not is_executable_in(rootfs, path)]
    if missing:
        raise ValueError(f"{rootfs} has no executable {' nor '.join(missing)}: the E2B SDK runs every command as "
                         f"`/bin/bash -l -c …`, so each would fail. {ROOTFS_HOWTO}")
    root.mkdir(parents=True, exist_ok=True)
    registry = _registry(root)
    registry[name] = str(rootfs)
    _write_json(root / REGISTRY, registry)
    return rootfs


def remove(root: Path, name: str, *, etc_root: Path | None = None) -> None:
    registry = _registry(root)
    if name not in registry:
        raise TemplateNotFound(f"no template {name!r}; `corral template list` shows the registered ones")
    del registry[name]
    _write_json(root / REGISTRY, registry)
    shutil.rmtree(_etc_dir(root, name, etc_root).parent, ignore_errors=True)


def get(root: Path, name: str, *, etc_root: Path | None = None) -> Template:
    """Template `name`; TemplateNotFound if it was never registered. Its /etc is generated when missing
    or made from another root (the template was registered again from a new directory)."""
    if name == BASE:
        return Template(BASE, Path("/"), _current_etc(Path("/"), _etc_dir(root, BASE, etc_root), "host"))
    rootfs = _registry(root).get(name)
    if rootfs is None:
        raise TemplateNotFound(f"no template {name!r} here (there are: {', '.join(names(root))}); templates are "
                               f"registered per runner: `corral template add {name} --rootfs DIR --data-dir "
                               "<the runner's data dir>`")
    registration = f"{rootfs} registered {(root / REGISTRY).stat().st_mtime_ns}"
    return Template(name, Path(rootfs), _current_etc(Path(rootfs), _etc_dir(root, name, etc_root), registration))


def _current_etc(rootfs: Path, etc: Path, source: str) -> Path:
    """`etc`, generated from `rootfs`/etc unless it was for this `source` (a marker beside it says which):
    registering a template again, from a new root or the same, makes it anew."""
    marker = etc.parent / "source"
    try:
        current = (etc / "passwd").exists() and marker.read_text() == source
    except FileNotFoundError:
        current = False
    if not current:
        build_etc(rootfs / "etc", etc)
        marker.write_text(source)
    return etc


def registered(root: Path) -> list[tuple[str, Path]]:
    """Every template name with its root directory, without generating anything: base, then the registered ones."""
    return [(BASE, Path("/")), *((name, Path(path)) for name, path in sorted(_registry(root).items()))]


def names(root: Path) -> list[str]:
    """Every template name sandboxes may use: base, then the registered ones."""
    return [BASE, *sorted(_registry(root))]


def list_templates(root: Path, *, etc_root: Path | None = None) -> list[Template]:
    return [get(root, name, etc_root=etc_root) for name in names(root)]


def _write_json(path: Path, data: dict[str, str]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def build_etc(source: Path, dest: Path) -> None:
    """Generate a scrubbed /etc at `dest` from the allowlisted parts of `source`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(dest.parent, 0o711)
    work = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".etc-"))
    os.chmod(work, 0o755)
    for rel in ETC_ALLOW:
        src = source / rel
        if not os.path.lexists(src) or ETC_DENY.search(rel):
            continue
        target = work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy(src, target, rel)
    for name, text in (("passwd", PASSWD), ("group", GROUP), ("hosts", HOSTS), ("hostname", HOSTNAME + "\n"),
                       ("resolv.conf", RESOLV), ("nsswitch.conf", NSSWITCH)):
        (work / name).write_text(text)
        os.chmod(work / name, 0o644)
    if dest.exists():
        old = dest.with_name(dest.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(dest, old)
        os.rename(work, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(work, dest)


def _copy(src: Path, target: Path, rel: str) -> None:
    if src.is_symlink():
        os.symlink(os.readlink(src), target)
    elif src.is_dir():
        target.mkdir(exist_ok=True)
        os.chmod(target, 0o755)
        for child in sorted(os.listdir(src)):
            child_rel = f"{rel}/{child}"
            if not ETC_DENY.search(child_rel):
                _copy(src / child, target / child, child_rel)
    elif src.is_file():
        with contextlib.suppress(PermissionError):
            mode = src.stat().st_mode
            if mode & 0o004:  # only what any user of the host could read anyway
                shutil.copyfile(src, target)
                os.chmod(target, 0o644 | (mode & 0o111))
