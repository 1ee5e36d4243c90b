"""The SDK interop tests, run against the protocol layer alone (the fake fleet of fakes.py):
a failure here is in corral/e2b, not in a provider or the fleet."""

from ..interop.test_e2b_sdk import *  # noqa: F403 - the same tests, with this folder's e2b_env
