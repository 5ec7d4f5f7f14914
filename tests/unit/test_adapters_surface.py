"""``adapters`` exports what an adapter author uses (issue #13, item 7)."""

from __future__ import annotations

import adapters
from adapters import base


def test_every_public_name_of_the_contract_is_exported_by_the_package() -> None:
    contract = {
        name
        for name, value in vars(base).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == base.__name__
    }
    assert contract, "adapters.base defines no public names?"
    assert contract - set(adapters.__all__) == set()


def test_the_package_exports_the_order_types_and_errors_an_adapter_raises() -> None:
    from orders.errors import InvalidInput, OutcomeUnknown, TransientError
    from orders.model import Order
    from orders.money import Money

    for name, value in {
        "Order": Order,
        "Money": Money,
        "InvalidInput": InvalidInput,
        "OutcomeUnknown": OutcomeUnknown,
        "TransientError": TransientError,
        "Pairs": base.Pairs,
    }.items():
        assert getattr(adapters, name) is value, name
    assert all(hasattr(adapters, name) for name in adapters.__all__)
