from corral import Table


class Message(Table, name="messages"):
    author: str
    body: str
