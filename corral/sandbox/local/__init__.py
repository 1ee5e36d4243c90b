"""The `local` sandbox provider: bubblewrap namespaces, cgroups (v1 or v2) and a loop-mounted disk."""

from .cgroups import Cgroups, CgroupV1, CgroupV2
from .provider import LocalProvider
from .sandbox import LocalSandbox
from .templates import Template

__all__ = ["CgroupV1", "CgroupV2", "Cgroups", "LocalProvider", "LocalSandbox", "Template"]
