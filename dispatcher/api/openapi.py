"""What /openapi.json says beyond the routes' own models: the payment systems this process has
enabled, and the currencies each takes, so the schema allows exactly the orders the API accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.openapi.models import Schema
from pydantic import BaseModel

from dispatcher.api.schemas import JSON_WITHOUT_NUL, METADATA_SCHEMA, OrderCreate
from dispatcher.runtime import AdapterRuntime

CALLBACKS = "/v1/callbacks/{adapter}"

# A notification is read by its payment system's adapter; every one of them sends a non-empty
# JSON object or form. A body its adapter cannot read is answered 400 (documented there).
_NOTIFICATION_BODY: dict[str, Any] = {
    "description": "The payment system's notification as it sends it; its adapter reads it",
    "required": True,
    "content": {
        "application/json": {"schema": {"type": "object", "minProperties": 1}},
        "application/x-www-form-urlencoded": {"schema": {"type": "object", "minProperties": 1}},
    },
}


# The bodies of routes that read their request themselves (``dispatcher.api.body``): FastAPI
# publishes the models of declared parameters only, so these are added as it would add them.
READ_BY_THEIR_ROUTES: tuple[type[BaseModel], ...] = (OrderCreate,)


def publish_bodies(schema: dict[str, Any]) -> None:
    """Add the models of :data:`READ_BY_THEIR_ROUTES` to ``schema``'s components, in place."""
    models = schema["components"]["schemas"]
    for model in READ_BY_THEIR_ROUTES:
        found = model.model_json_schema(ref_template="#/components/schemas/{model}")
        # What FastAPI does with the document it builds: read it as OpenAPI's model.
        models[model.__name__] = jsonable_encoder(Schema(**found), by_alias=True, exclude_none=True)


def publish_adapters(schema: dict[str, Any], runtimes: Mapping[str, AdapterRuntime]) -> None:
    """Name the enabled payment systems in ``schema`` (the document FastAPI built), in place."""
    names = sorted(runtimes)
    schema["components"]["schemas"]["JsonValue"] = JSON_WITHOUT_NUL
    create = schema["components"]["schemas"]["OrderCreate"]
    create["properties"]["metadata"] |= METADATA_SCHEMA
    create["properties"]["adapter"]["enum"] = names
    # Which currencies go with which payment system (none listed: any ISO 4217 code).
    choices = []
    for name in names:
        currencies = sorted(runtimes[name].adapter.capabilities.currencies)
        choice: dict[str, Any] = {"properties": {"adapter": {"const": name}}}
        if currencies:
            choice["properties"]["currency"] = {"enum": currencies}
        choices.append(choice)
    if choices:
        create["anyOf"] = choices
    callback = schema["paths"].get(CALLBACKS, {}).get("post")
    if callback is not None:
        for parameter in callback.get("parameters", []):
            if parameter["name"] == "adapter":
                parameter["schema"] = {"type": "string", "enum": names}
        callback["requestBody"] = _NOTIFICATION_BODY
        # The adapter's own refusal (YooKassa's: a sender outside its networks), body and all.
        callback["responses"].setdefault(
            "403", {"description": "Not from the payment system (e.g. a sender it does not use)"}
        )
