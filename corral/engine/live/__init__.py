"""Live queries and Convex's WebSocket sync protocol: subscriptions, rounds, Transitions."""

from .subscriptions import ClientState, Subscription, SyncHub
from .sync import serve_socket

__all__ = ["ClientState", "Subscription", "SyncHub", "serve_socket"]
