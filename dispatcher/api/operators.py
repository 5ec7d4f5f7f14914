"""Operator accounts of the web console: people, separate from the sites' API keys.

``paydispatch operators add NAME`` makes an account and shows its password once; only a scrypt
hash of it is stored. Passwords are never chosen by people: each is 18 random bytes (144 bits),
so guessing one online is hopeless and the hash only has to make a copied table useless.

Why :func:`hashlib.scrypt` and no password-hashing package (argon2-cffi, bcrypt): the standard
library's scrypt is memory-hard, needs no compiled dependency on every machine that runs the
API, and with random passwords there is nothing that argon2's tuning would add.

A login opens a session: the browser holds a random token in an HttpOnly, SameSite=Strict
cookie, and the database holds only its SHA-256, the operator and the session's CSRF token.
A session lives on the server, not in a signed cookie, so every API process (and every
``--workers`` process) honours it without a shared signing key, and logging out, disabling an
operator or resetting a password ends it at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from orders.db import Pool, database_errors, query
from orders.errors import InvalidInput

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
PASSWORD_BYTES = 18
SESSION_TTL = timedelta(hours=8)
# scrypt's cost: 16 MiB and ~50 ms per check (RFC 7914's interactive-login figures).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=32
    )


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64): the cost travels with the hash, so it can grow."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        found = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
        return hmac.compare_digest(found, base64.b64decode(digest))
    except ValueError:
        return False


@cache
def _decoy() -> str:
    """A hash checked for unknown names, so a login takes as long whichever part is wrong."""
    return hash_password(secrets.token_urlsafe(PASSWORD_BYTES))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    created_at: datetime
    last_login_at: datetime | None
    disabled_at: datetime | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Operator:
        return cls(row["name"], row["created_at"], row["last_login_at"], row["disabled_at"])


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in operator; ``token`` is only known right after the login."""

    operator: str
    csrf_token: str
    token: str = ""

    def csrf_ok(self, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf_token.encode())


class Operators:
    """Accounts (add, reset, disable, list) and their sessions (login, find, logout)."""

    def __init__(self, pool: Pool, *, session_ttl: timedelta = SESSION_TTL) -> None:
        self.pool = pool
        self.session_ttl = session_ttl

    def add(self, name: str) -> str:
        """A new operator; returns the password, which is never stored or shown again."""
        if not NAME.fullmatch(name):
            raise InvalidInput(
                "name", "1-64 letters, digits, '.', '_', '@' or '-', starting with a letter"
            )
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        params = {"name": name, "password_hash": hash_password(password)}
        with database_errors(), self.pool.connection() as conn:
            row = conn.execute(query("insert_operator"), params).fetchone()
        if row is None:
            raise InvalidInput("name", f"operator {name!r} exists already")
        return password

    def reset(self, name: str) -> str:
        """A new password for an enabled operator; their open sessions end."""
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        params = {"name": name, "password_hash": hash_password(password)}
        with database_errors(), self.pool.connection() as conn:
            row = conn.execute(query("set_password"), params).fetchone()
            if row is None:
                raise InvalidInput("name", f"no enabled operator {name!r}")
            conn.execute(query("end_sessions_of"), {"name": name})
        return password

    def disable(self, name: str) -> bool:
        """Disable an operator for good (the name stays, as their recorded actions name it)."""
        with database_errors(), self.pool.connection() as conn:
            row = conn.execute(query("disable_operator"), {"name": name}).fetchone()
            conn.execute(query("end_sessions_of"), {"name": name})
        return row is not None

    def list(self) -> list[Operator]:
        with database_errors(), self.pool.connection() as conn:
            rows = conn.execute(query("list_operators")).fetchall()
        return [Operator.from_row(row) for row in rows]

    def login(self, name: str, password: str) -> Session | None:
        """A new session for the right name and password; None for anything else, after the
        same work whichever part was wrong."""
        row = None
        if NAME.fullmatch(name):
            with database_errors(), self.pool.connection() as conn:
                row = conn.execute(query("get_operator"), {"name": name}).fetchone()
        stored = _decoy() if row is None else row["password_hash"]
        matches = check_password(password, stored)
        if row is None or not matches or row["disabled_at"] is not None:
            return None
        token = secrets.token_urlsafe(32)
        session = Session(row["name"], secrets.token_urlsafe(32), token)
        params = {
            "token_hash": _token_hash(token),
            "name": session.operator,
            "csrf_token": session.csrf_token,
            "ttl": self.session_ttl,
        }
        with database_errors(), self.pool.connection() as conn:
            conn.execute(query("purge_sessions"))
            conn.execute(query("insert_session"), params)
            conn.execute(query("touch_login"), params)
        return session

    def session(self, token: str | None) -> Session | None:
        """The live session of a cookie's token, if any."""
        if not token or len(token) > 100:
            return None
        with database_errors(), self.pool.connection() as conn:
            row = conn.execute(query("find_session"), {"token_hash": _token_hash(token)}).fetchone()
        return None if row is None else Session(row["operator"], row["csrf_token"])

    def logout(self, token: str) -> None:
        with database_errors(), self.pool.connection() as conn:
            conn.execute(query("end_session"), {"token_hash": _token_hash(token)})
