"""Tokens for tests: one HS256 secret that test deployments are started with."""

from __future__ import annotations

from datetime import UTC, datetime

from taskwire.identity import Principal
from taskwire.settings import Settings
from taskwire.tokens import mint_token

# 32+ bytes, as the verifier requires; a test value, never a real secret.
TEST_JWT_SECRET = "taskwire-tests-only-secret-0123456789abcdef"
AUTH_ENV = {"AUTH_MODE": "jwt", "JWT_SECRET": TEST_JWT_SECRET}
TEST_SUBJECT = "tester"
# A full token's principal for calling the service layer directly.
TESTER = Principal(subject=TEST_SUBJECT)


def auth_settings(**overrides: object) -> Settings:
    return Settings(auth_mode="jwt", jwt_secret=TEST_JWT_SECRET, **overrides)  # type: ignore[arg-type]


def token_for(subject: str = TEST_SUBJECT, *, ttl_seconds: int = 3600) -> str:
    return mint_token(
        Settings(jwt_secret=TEST_JWT_SECRET), subject, ttl_seconds=ttl_seconds, now=_now()
    )


def bearer(subject: str = TEST_SUBJECT) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(subject)}"}


def _now() -> datetime:
    return datetime.now(UTC)
