"""``/healthz`` (the process answers), ``/readyz`` (database and broker reachable), ``/metrics``."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import redis
from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.responses import JSONResponse, Response

from dispatcher.api.auth import Context
from dispatcher.api.context import ApiContext
from dispatcher.api.schemas import Health
from orders.db import query

router = APIRouter(tags=["ops"])
TIMEOUT = 2.0


def check_database(ctx: ApiContext) -> str:
    try:
        with ctx.pool.connection(timeout=TIMEOUT) as conn:
            conn.execute(query("ping"))
    except Exception as exc:  # any failure is the answer
        return f"error: {type(exc).__name__}"
    return "ok"


def check_broker(url: str | None) -> str:
    if url is None:
        return "not configured"
    try:
        if url.startswith(("redis://", "rediss://", "unix://")):
            client = redis.Redis.from_url(
                url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
            )
            try:
                client.ping()
            finally:
                client.close()
        else:  # amqp: the port answers
            parts = urlsplit(url)
            address = (parts.hostname or "localhost", parts.port or 5672)
            with socket.create_connection(address, TIMEOUT):
                pass
    except Exception as exc:  # any failure is the answer
        return f"error: {type(exc).__name__}"
    return "ok"


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "Which dependency failed"}},
    summary="Database and broker reachable",
)
def readyz(ctx: Context) -> Response:
    checks = {"database": check_database(ctx), "broker": check_broker(ctx.broker_url)}
    ok = all(v in {"ok", "not configured"} for v in checks.values())
    body = Health(status="ready" if ok else "unready", checks=checks)
    return JSONResponse(body.model_dump(), 200 if ok else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus exposition"}},
    summary="Prometheus metrics",
)
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
