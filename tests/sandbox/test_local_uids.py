"""Host uids are claimed host-wide: a node's embedded runner and a `corral runner` on the same host (two local
providers with different roots and the same uid range) never give two sandboxes the same uid."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from corral.sandbox.local.uids import UidClaims
from corral.sandbox.protocol import CapacityError, SandboxSpec

from .local_support import Env, local_env, run, sh


@pytest.fixture
def env() -> Iterator[Env]:
    yield from local_env()


@pytest.fixture
def other(env: Env) -> Iterator[Env]:
    """A second provider root on the same host, with the same uid range."""
    for second in local_env():
        second.uid_base = env.uid_base
        yield second


def test_two_providers_with_the_same_uid_range_give_their_sandboxes_distinct_uids(env: Env, other: Env) -> None:
    async def scenario() -> None:
        node_runner, standalone = env.make(), other.make()
        made = [await node_runner.create(SandboxSpec(sandbox_id="a1")), await standalone.create(SandboxSpec(sandbox_id="b1")),
                await node_runner.create(SandboxSpec(sandbox_id="a2")), await standalone.create(SandboxSpec(sandbox_id="b2"))]
        try:
            uids = [sandbox.host_uid for sandbox in made]
            assert len(set(uids)) == 4 and all(env.uid_base <= uid < env.uid_base + 4 for uid in uids)
            owners = {uid: node_runner.uids.owner(uid) for uid in uids}
            assert owners[made[1].host_uid] == (str(standalone.root), "b1")
            for sandbox in made:
                code, out, _ = await sh(sandbox, "id -u")  # inside, every one is `user`
                assert (code, out) == (0, "1000\n")
            freed = made[0].host_uid
            await made[0].kill()
            assert node_runner.uids.owner(freed) is None  # a kill releases its uid...
            again = await standalone.create(SandboxSpec(sandbox_id="b3"))  # ...for any provider of the host
            made[0] = again
            assert again.host_uid == freed
        finally:
            for sandbox in made:
                await sandbox.kill()
            await node_runner.close()
            await standalone.close()

    run(scenario())


def test_a_restarted_provider_keeps_its_claims_and_a_stale_claim_is_taken_over(env: Env, other: Env) -> None:
    async def scenario() -> None:
        first = env.make()
        kept = await first.create(SandboxSpec(sandbox_id="keep1"))
        uid = kept.host_uid
        await first.close()  # the node restarts; its sandbox runs on
        restarted = env.make()
        (adopted,) = await restarted.adopt()
        standalone = other.make()
        newcomer = await standalone.create(SandboxSpec(sandbox_id="new1"))
        try:
            assert adopted.host_uid == uid and restarted.uids.owner(uid) == (str(restarted.root), "keep1")
            assert newcomer.host_uid != uid
        finally:
            await adopted.kill()
            await newcomer.kill()
            await restarted.close()
            await standalone.close()

    run(scenario())


def test_claims_of_sandboxes_that_are_gone_are_reclaimed_and_a_full_range_says_so(tmp_path) -> None:
    claims = UidClaims(tmp_path / "uids")
    live_root = tmp_path / "live"
    (live_root / "sandboxes" / "s1").mkdir(parents=True)
    assert claims.claim(3_000_000, 2, live_root, "s1") == 3_000_000
    gone_root = tmp_path / "gone"  # its sandbox directory no longer exists: killed while its provider was down
    assert claims.claim(3_000_000, 2, gone_root, "s2") == 3_000_001
    (live_root / "sandboxes" / "s3").mkdir(parents=True)
    assert claims.claim(3_000_000, 2, live_root, "s3") == 3_000_001  # the stale claim is taken over
    with pytest.raises(CapacityError, match="sandbox_uid_count"):
        claims.claim(3_000_000, 2, live_root, "s4")
