"""Corral's own crons, declared like a functions folder's `crons.py` (docs/scheduling.md).

The sandbox lifecycle (docs/sandboxes.md): durations come from Settings through the
`sandbox_policy` table; the intervals below only say how often each sweep looks.
"""

from corral import Crons

from . import reapers, runners, sandboxes

crons = Crons()
crons.interval("expire sandboxes", sandboxes.expire, seconds=5)  # end_at passed: kill or pause (on_timeout)
crons.interval("pause idle sandboxes", sandboxes.pause_idle, seconds=30)  # sandbox_idle_timeout; a run's sandbox: its idle timeout, killed
crons.interval("clean retained sandboxes", sandboxes.clean_retained, hours=1)  # sandbox_retention
crons.interval("expire runner leases", runners.expire_leases, seconds=5)  # runner_lease
crons.interval("reap stuck runs", reapers.tick, seconds=30)  # run_boot_timeout; idle and overdue runs end with their sandboxes
