"""Corral's own crons, declared like a functions folder's `crons.py` (docs/scheduling.md).

    crons.interval("reap idle sandboxes", sandboxes.reap_idle, minutes=1)
    crons.daily("forget old runs", "sandbox_runs:forget_old", hour_utc=3)
"""

from corral import Crons

crons = Crons()
