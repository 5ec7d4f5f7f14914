"""The built-in sandbox payment system: a local HTTP server with a pay page, signed webhooks and
fault injection, and the adapter paydispatch uses to talk to it.

Only the adapter is imported here (the entry point loads it inside the dispatcher); the server
lives in :mod:`adapters.sandbox.runner` (``serve``, ``running_sandbox``) and
:mod:`adapters.sandbox.server` (``create_app``).
"""

from adapters.sandbox.adapter import SCENARIO_METADATA_KEY, Sandbox
from adapters.sandbox.config import SandboxConfig

adapter = Sandbox()

__all__ = ["SCENARIO_METADATA_KEY", "Sandbox", "SandboxConfig", "adapter"]
