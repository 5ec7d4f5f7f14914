"""Builds paydispatch-client from the checkout's own ``orders`` modules, not from copies.

In a checkout the modules are two folders up (``orders/``); an sdist built here carries them
beside this file, so a wheel built from the sdist finds them there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class ClientModules(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        source = root / "orders"
        if not source.is_dir():
            source = root.parent.parent / "orders"
        for name in self.config["modules"]:
            path = source / name
            if not path.is_file():
                raise FileNotFoundError(f"paydispatch-client is built from {path}: not found")
            build_data["force_include"][str(path)] = f"orders/{name}"
