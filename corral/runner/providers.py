"""The provider a runner drives, chosen by name (the `sandbox_provider` setting, `corral runner --provider`).

`local` (bubblewrap, the default) is the only isolating provider; `host` runs sandboxes as plain
host processes and is used only when named. When `local` cannot work here, sandbox calls fail
with ProviderUnavailable saying how to fix it: there is never a silent fallback to `host`.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from typing import Any

from ..sandbox.protocol import Provider
from .link import ProviderUnavailable

PROVIDERS = ("local", "host")


def provider_root(name: str, data_dir: Path) -> Path:
    """Where provider `name` keeps its sandboxes (and `local` its templates) under a data directory."""
    return Path(data_dir) / "local" if name == "local" else Path(data_dir)


def open_provider(name: str, data_dir: Path, *, uid_base: int = 1_000_000, uid_count: int = 100_000) -> Provider:
    """The provider `name`, keeping its sandboxes under `data_dir`; ProviderUnavailable if it cannot work here.

    `uid_base`/`uid_count` (the `sandbox_uid_*` settings) are the host uids the `local` provider's sandboxes
    run as; each is claimed host-wide, so every provider on the host may share one range."""
    if name == "host":
        from ..sandbox.host import HostProvider

        return HostProvider(provider_root(name, data_dir))
    if name == "local":
        return _local(provider_root(name, data_dir), uid_base=uid_base, uid_count=uid_count)
    raise ProviderUnavailable(f"unknown sandbox provider {name!r}: set sandbox_provider (CORRAL_SANDBOX_PROVIDER) "
                              f"to one of {', '.join(PROVIDERS)}")


def _local(root: Path, **options: Any) -> Provider:
    if shutil.which("bwrap") is None:
        raise ProviderUnavailable("the local sandbox provider needs bubblewrap, which is not installed: install it "
                                  "(apt-get install bubblewrap) and restart; or, for trusted work only, set "
                                  "sandbox_provider = \"host\" (no isolation)")
    try:
        module: Any = importlib.import_module("corral.sandbox.local")
        provider_class = module.LocalProvider
    except (ImportError, AttributeError) as exc:
        raise ProviderUnavailable(f"the local sandbox provider is not available in this build: {exc}") from None
    try:
        provider: Provider = provider_class(root, **options)
    except Exception as exc:  # noqa: BLE001 - whatever stops it from working here, say so and how to fix it
        raise ProviderUnavailable(f"the local sandbox provider cannot work on this host: {exc}") from None
    return provider
