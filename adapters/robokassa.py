"""Robokassa: skeleton (issue #11), being written."""

from __future__ import annotations

from typing import ClassVar

from adapters.base import (
    Adapter,
    AdapterSettings,
    Capabilities,
    Invoice,
    PspRequest,
    PspResponse,
    SettingSpec,
    StatusReport,
)
from orders.model import Order


class Robokassa(Adapter):
    name: ClassVar[str] = "robokassa"
    capabilities: ClassVar[Capabilities] = Capabilities(idempotent_create=False)
    settings_spec: ClassVar[tuple[SettingSpec, ...]] = (
        SettingSpec("API_URL", default="https://robokassa.invalid"),
    )

    def build_create(self, order: Order, settings: AdapterSettings) -> PspRequest | Invoice:
        raise NotImplementedError

    def parse_create(self, order: Order, response: PspResponse) -> Invoice:
        raise NotImplementedError

    def build_status(self, order: Order, settings: AdapterSettings) -> PspRequest:
        raise NotImplementedError

    def parse_status(
        self,
        order: Order,
        response: PspResponse,
        settings: AdapterSettings,
        operation: str = "status",
    ) -> StatusReport:
        raise NotImplementedError


adapter = Robokassa()
