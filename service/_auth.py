"""Bearer tokens: HS256 JWTs whose ``sub`` is the owner; ``admin: true`` sees all.

Crypto and claim checks are PyJWT's; this module only says which algorithm and
claims are accepted and turns failures into 401 answers.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jwt
from aiohttp import web

from ._errors import ApiError

ALGORITHM = "HS256"
MAX_OWNER = 256
MAX_TOKEN = 4096
"""Longest token accepted, in characters. A token this API mints is a few
hundred; the bound keeps PyJWT from decoding arbitrary amounts of base64."""


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the owner name from ``sub``, and whether it is an admin."""

    owner: str
    admin: bool = False

    def may_see(self, owner: str | None) -> bool:
        """True if a job owned by ``owner`` is visible to this caller."""
        return self.admin or owner == self.owner


class Unauthorized(ApiError):
    """401 with ``WWW-Authenticate: Bearer`` (RFC 6750)."""

    def __init__(self, message: str, *, invalid_token: bool = True) -> None:
        super().__init__(401, "unauthorized", message)
        challenge = 'Bearer realm="pgqueue"'
        if invalid_token:
            challenge += f', error="invalid_token", error_description="{message}"'
        self.headers = {"WWW-Authenticate": challenge}


def mint_token(secret: str, owner: str, *, admin: bool = False, ttl: float = 86_400) -> str:
    """A signed token for ``owner`` that expires after ``ttl`` seconds."""
    if not owner or len(owner) > MAX_OWNER or "\x00" in owner:
        raise ValueError(f"owner must be 1 to {MAX_OWNER} characters, not {owner!r}")
    if not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": owner, "iat": now, "exp": now + int(max(1, ttl))}
    if admin:
        claims["admin"] = True
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def decode_token(secret: str, token: str) -> Principal:
    """The caller a token names; :class:`Unauthorized` saying why it is refused."""
    # A JWT is ASCII (base64url and dots). aiohttp hands over header bytes
    # >= 0x80 as surrogate escapes, which PyJWT cannot even encode.
    if not token.isascii():
        raise Unauthorized("the token is malformed (a JWT is ASCII)")
    if len(token) > MAX_TOKEN:
        raise Unauthorized(f"the token is malformed (over {MAX_TOKEN} characters)")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],  # never "none", never what the header asks for
            options={"require": ["sub", "exp"]},
            leeway=5,
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the token has expired") from None
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthorized(f"the token has no {exc.claim!r} claim") from None
    except jwt.InvalidSignatureError:
        raise Unauthorized("the token's signature does not verify") from None
    except jwt.InvalidAlgorithmError:
        raise Unauthorized(f"the token is not signed with {ALGORITHM}") from None
    except (jwt.InvalidTokenError, ValueError):
        # ValueError: PyJWT lets some decoding failures of odd input through.
        raise Unauthorized("the token is malformed") from None
    owner = claims.get("sub")
    if not isinstance(owner, str) or not 1 <= len(owner) <= MAX_OWNER or "\x00" in owner:
        raise Unauthorized("the token's 'sub' must be 1 to 256 characters")
    return Principal(owner=owner, admin=claims.get("admin") is True)


def authenticate(request: web.Request, secret: str, *, query_token: bool = False) -> Principal:
    """The caller of ``request``: ``Authorization: Bearer TOKEN``, or (only where
    ``query_token`` is allowed, for EventSource) ``?access_token=TOKEN``."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("use 'Authorization: Bearer TOKEN'")
        return decode_token(secret, token.strip())
    if query_token and request.query.get("access_token"):
        return decode_token(secret, request.query["access_token"])
    raise Unauthorized("no bearer token", invalid_token=False)
