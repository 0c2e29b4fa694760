"""Who is calling: the bearer token of an HTTP request or of a websocket's connection_init,
turned into a Principal according to AUTH_MODE. The token rules are in taskwire.tokens."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from starlette.responses import JSONResponse

from taskwire.errors import Unauthenticated
from taskwire.identity import Principal
from taskwire.settings import Settings
from taskwire.tokens import TokenVerifier, bearer_token

log = logging.getLogger(__name__)

# Verified tokens remembered per process (least recently used go first).
VERIFIED_TOKENS_KEPT = 4096


class Authenticator:
    """AUTH_MODE=jwt verifies every request's token; AUTH_MODE=none makes every caller the one
    local user (taskwire dev), who sees every task."""

    def __init__(self, settings: Settings) -> None:
        self.required = settings.auth_mode == "jwt"
        # Built up front so that a bad key configuration stops the start, not a request.
        self._tokens = TokenVerifier.from_settings(settings) if self.required else None
        # Tokens that verified, by their exact text: a client sends the same token with every
        # request, and checking its signature again was a tenth of a cached read's CPU. Only the
        # clock can change the answer for the same bytes, so expiry is checked on every use.
        self._verified: OrderedDict[str, Principal] = OrderedDict()

    def from_header(self, authorization: str | None) -> Principal:
        if self._tokens is None:
            return Principal.local()
        return self._verify(bearer_token(authorization))

    def _verify(self, token: str) -> Principal:
        assert self._tokens is not None
        known = self._verified.get(token)
        if known is not None and not known.expired(datetime.now(UTC)):
            self._verified.move_to_end(token)
            return known
        principal = self._tokens.verify(token)  # raises for an expired one, which is dropped
        self._verified[token] = principal
        if len(self._verified) > VERIFIED_TOKENS_KEPT:
            self._verified.popitem(last=False)
        return principal

    def from_connection_params(self, params: Mapping[str, Any] | None) -> Principal:
        """The token of a websocket's connection_init payload: {"Authorization": "Bearer …"},
        as most clients send it, or {"authToken": "…"}."""
        if self._tokens is None:
            return Principal.local()
        params = params or {}
        header = params.get("Authorization", params.get("authorization"))
        if isinstance(header, str):
            return self._verify(bearer_token(header))
        token = params.get("authToken")
        if isinstance(token, str) and token:
            return self._verify(token.removeprefix("Bearer "))
        raise Unauthenticated("A bearer token is required in the connection_init payload.")

    def watch_token(self, caller: Principal, owner: str, task_id: UUID) -> str | None:
        """A token that may only read `task_id`, for its owner holding a full token."""
        if self._tokens is None or not caller.may_write or caller.subject != owner:
            return None
        return self._tokens.mint_watch_token(owner, task_id)


def unauthenticated_response(error: Unauthenticated, *, token_sent: bool) -> JSONResponse:
    """401 with the GraphQL error shape, and the RFC 6750 challenge (which names no error
    when the request carried no credentials at all, section 3.1)."""
    challenge = 'Bearer realm="taskwire"'
    if token_sent:
        challenge += ', error="invalid_token"'
    return JSONResponse(
        {"errors": [{"message": error.message, "extensions": error.extensions}]},
        status_code=401,
        headers={"WWW-Authenticate": challenge},
    )
