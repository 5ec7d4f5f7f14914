"""Ports in a row for processes that listen on a base port and the ones after it."""

from __future__ import annotations

import contextlib
import random
import socket


def free_ports_in_a_row(count: int) -> int:
    """The first of ``count`` ports in a row on 127.0.0.1 that nothing uses now, below the
    ephemeral range (32768 and up), where no client's connection or free_port() takes them
    meanwhile (``paydispatch run --metrics-base``: the sweeper on the first, worker n on + n)."""
    rng = random.Random()
    while True:
        base = rng.randrange(20_000, 32_768 - count)
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
