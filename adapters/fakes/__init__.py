"""Local fakes of real payment systems, written from their public API references.

Each module serves one payment system's merchant API (and its pay page) on a loopback port, for
the end-to-end tests and ``./run demo --adapter NAME``. They are reconstructions, not the real
services: see each module's docstring for the documentation pages it follows.
"""
