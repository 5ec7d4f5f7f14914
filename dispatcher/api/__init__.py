"""The HTTP API (DESIGN.md section 8): orders for sites, status pages for buyers, callbacks for
payment systems, wallets, and health and metrics for ops.

:func:`dispatcher.api.app.create_app` builds the ASGI app over an
:class:`dispatcher.api.context.ApiContext`; :mod:`dispatcher.api.server` serves it. This package's
own module imports nothing, so the CLI's ``keys`` and ``operators`` commands, which live here,
load no FastAPI, and neither does the supervisor, which only names the API's URL.
"""


def base_url(host: str, port: int) -> str:
    """The URL of ``host:port`` (an IPv6 address in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
