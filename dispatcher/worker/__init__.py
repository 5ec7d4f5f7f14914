"""The worker process: dramatiq actors that hand each step to one engine on an asyncio loop.

A worker consumes its adapters' queues (and the billing queue), runs each order's step (submit,
poll, finalize, watch) against the payment system through the HTTP transport with its breaker
and outage log, and commits the transition; the sweeper, which only sends steps, imports none of
this package.
"""
