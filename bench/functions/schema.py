"""Tables served by the benchmark node."""

from corral import Table, index


class Message(Table, name="messages"):
    room: str
    author: str
    body: str
    indexes = [index("by_room", "room")]


class Account(Table, name="accounts"):
    balance: int


class JobRun(Table, name="job_runs"):
    """One run of a job scheduled by bench.scheduler: when it was due and when it started (ms)."""

    n: int
    due: float
    started: float
    node: str
