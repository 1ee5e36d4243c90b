"""Functions that run later (`ctx.scheduler`) and on a schedule (crons), and the loop that runs them."""

from .crons import CronExpression, CronRunner, Crons, load_crons
from .scheduler import ActionScheduler, MutationScheduler, Scheduler, install

__all__ = [
    "ActionScheduler", "CronExpression", "CronRunner", "Crons", "MutationScheduler", "Scheduler",
    "install", "load_crons",
]
