"""Operators' commands: orders, status, resolve, reconcile.

:mod:`dispatcher.ops.orders` is ``paydispatch status`` and ``paydispatch orders
list|show|stuck|poll|resolve`` (its ``resolve`` also serves the console);
:mod:`dispatcher.ops.reconcile` is ``paydispatch reconcile``, which compares the books with each
payment system, and :mod:`dispatcher.ops.reconciliation` its comparison and report, without I/O.
"""
