"""The sweeper process: claims due orders (and billing webhook events) and sends their steps.

It decides when each order is looked at again and sends the steps through
:mod:`dispatcher.steps`; it never loads the worker's actors, engine or HTTP transport. It alone
refreshes the database-derived gauges (:mod:`dispatcher.sweeper.dbstats`).
"""

from dispatcher.sweeper.loop import CHANNEL, Sweeper

__all__ = ["CHANNEL", "Sweeper"]
