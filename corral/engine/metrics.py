"""Prometheus metrics, served at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

FUNCTION_CALLS = Counter("corral_function_calls_total", "Function calls by kind and outcome", ["kind", "outcome"], registry=REGISTRY)
SYNC_CLIENTS = Gauge("corral_sync_clients", "Open WebSocket sync sessions", registry=REGISTRY)
SYNC_ROUNDS = Counter("corral_sync_rounds_total", "Live-query update rounds", registry=REGISTRY)


def render() -> bytes:
    return bytes(generate_latest(REGISTRY))
