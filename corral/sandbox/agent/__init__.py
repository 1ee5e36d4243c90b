"""The in-sandbox agent: processes, PTYs, files and watches behind one Unix socket.

Standard library only and no asyncio, so that it starts in a few milliseconds; it runs as the
sandbox's user (ADR 0007). Run it as a directory: ``python3 -I -S <this dir> --socket PATH``.
This ``__init__`` must stay empty of imports: the agent imports it first when it starts.
"""
