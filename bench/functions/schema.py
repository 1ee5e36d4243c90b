"""Tables served by the benchmark node."""

from corral import Table, index


class Message(Table, name="messages"):
    room: str
    author: str
    body: str
    indexes = [index("by_room", "room")]


class Account(Table, name="accounts"):
    balance: int
