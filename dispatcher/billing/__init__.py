"""Billing: the wallet ledger, the hooks run when an order is paid, and webhook delivery."""
