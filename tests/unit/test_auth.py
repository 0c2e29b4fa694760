"""The Authenticator: which principal a request gets, and the cache of verified tokens."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from graphql_api.auth import Authenticator
from taskwire.errors import Unauthenticated
from taskwire.identity import Principal
from taskwire.settings import Settings
from taskwire.tokens import TokenVerifier, mint_token
from tests.support.auth import TEST_JWT_SECRET, auth_settings, token_for


def counting_verify(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = TokenVerifier.verify

    def verify(self: TokenVerifier, token: str, **kwargs: Any) -> Principal:
        calls.append(token)
        return real(self, token, **kwargs)

    monkeypatch.setattr(TokenVerifier, "verify", verify)
    return calls


def test_a_token_is_verified_once_then_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting_verify(monkeypatch)
    auth = Authenticator(auth_settings())
    token = token_for("alice")

    first = auth.from_header(f"Bearer {token}")
    again = auth.from_connection_params({"authToken": token})

    assert first == again
    assert first.subject == "alice"
    assert calls == [token]


def test_a_remembered_token_still_expires() -> None:
    auth = Authenticator(auth_settings(jwt_leeway_seconds=0))
    # Issued so that it expires within two seconds (exp is whole seconds: at least one).
    issued = datetime.now(UTC) - timedelta(seconds=58)
    token = mint_token(Settings(jwt_secret=TEST_JWT_SECRET), "alice", ttl_seconds=60, now=issued)
    assert auth.from_header(f"Bearer {token}").subject == "alice"

    deadline = time.monotonic() + 5
    refused: Unauthenticated | None = None
    while refused is None:
        try:
            auth.from_header(f"Bearer {token}")
        except Unauthenticated as error:
            refused = error
        assert time.monotonic() < deadline, "the remembered token never expired"
        time.sleep(0.05)
    assert refused.message == "The token has expired."


def test_a_refused_token_is_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting_verify(monkeypatch)
    auth = Authenticator(auth_settings())

    for _ in range(2):
        with pytest.raises(Unauthenticated):
            auth.from_header("Bearer not-a-token")

    assert calls == ["not-a-token", "not-a-token"]


def test_without_auth_everyone_is_the_local_user() -> None:
    auth = Authenticator(Settings(auth_mode="none"))

    assert auth.from_header(None) == Principal.local()
    assert auth.from_connection_params(None) == Principal.local()
