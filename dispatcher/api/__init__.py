"""The HTTP API (DESIGN.md section 8): orders for sites, status pages for buyers, callbacks for
payment systems, wallets, and health and metrics for ops. ``create_app`` builds the ASGI app."""

from dispatcher.api.app import create_app
from dispatcher.api.context import ApiContext

__all__ = ["ApiContext", "create_app"]
