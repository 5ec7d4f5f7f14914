"""Broker namespaces of the tests' own (issue #12, item 10): every test shares the Redis database
of PAYDISPATCH_BROKER_URL with whatever else is there, and touches only keys of its namespace.

Kept apart from tests.dispatch_support so tests/conftest.py can clean up without importing the
dispatcher.
"""

from __future__ import annotations

import uuid

import redis

# Every namespace own_namespace() handed out; tests/conftest.py deletes their keys at the end.
NAMESPACES: set[str] = set()


def own_namespace() -> str:
    """A broker namespace of one test's own: its queues share the configured Redis database
    with everything else there, and are the only keys it touches (issue #12, item 10)."""
    namespace = f"pdtest-{uuid.uuid4().hex[:12]}"
    NAMESPACES.add(namespace)
    return namespace


def flush_namespace(broker_url: str, namespace: str) -> int:
    """Delete every key of ``namespace`` (what a flushed Redis is to that daemon), and only
    those; returns how many there were."""
    client = redis.Redis.from_url(broker_url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=500))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()
