"""Bearer tokens (JWT) in, a Principal out; and the short-lived watch tokens Taskwire mints.

Follows RFC 8725 (JWT best current practices) and OWASP's JWT cheat sheet: the algorithm is
pinned by the configured key and never read from the token, exp/sub/aud/iss are required,
user and watch tokens are told apart by explicit typing (`typ`), their own audience and, when
WATCH_TOKEN_SECRET is set, their own key. Every refusal is an Unauthenticated with a short
message that never repeats what the token said. The keys are read by taskwire.keys.
"""

from __future__ import annotations

import math
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import jwt
from jwt.exceptions import InvalidSubjectError

from taskwire.errors import SettingsError, Unauthenticated
from taskwire.identity import Principal
from taskwire.keys import (
    MIN_RSA_BITS,
    MIN_SECRET_BYTES,
    Key,
    KeySet,
    hs256_secret,
    jwks_file,
    key_file,
)
from taskwire.settings import Settings

# MIN_SECRET_BYTES and MIN_RSA_BITS live with the key loading (taskwire.keys) and are still
# exported from here, where they were first.
__all__ = [
    "MAX_SUBJECT_CHARS",
    "MAX_TOKEN_BYTES",
    "MIN_RSA_BITS",
    "MIN_SECRET_BYTES",
    "WATCH_TOKEN_TYPE",
    "TokenVerifier",
    "bearer_token",
    "mint_token",
]

WATCH_TOKEN_TYPE = "taskwire-watch+jwt"
MAX_TOKEN_BYTES = 8 * 1024
MAX_SUBJECT_CHARS = 200
_REQUIRED = ("exp", "sub", "aud", "iss")
_INVALID = "The token is not valid."


class TokenVerifier:
    """Verifies user tokens (HS256 secret, RS256/EdDSA key file, or a JWKS file) and mints and
    verifies watch tokens. Build it with `from_settings`, once per process."""

    def __init__(
        self,
        settings: Settings,
        *,
        user_key: Key | None,
        jwks: KeySet = (),
        watch_secret: bytes | None = None,
    ) -> None:
        self._settings = settings
        self._user_key = user_key
        self._jwks = jwks
        self._watch_secret = watch_secret
        self._watch_key = Key(watch_secret, "HS256") if watch_secret is not None else None

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        """Read and check the key configuration; raises SettingsError naming the variable."""
        for name, value in (
            ("JWT_AUDIENCE", settings.jwt_audience),
            ("JWT_ISSUER", settings.jwt_issuer),
        ):
            if not value:
                raise SettingsError(f"{name} must not be empty.")
        sources = [
            name
            for name, value in (
                ("JWT_SECRET", settings.jwt_secret),
                ("JWT_PUBLIC_KEY_FILE", settings.jwt_public_key_file),
                ("JWT_JWKS_FILE", settings.jwt_jwks_file),
            )
            if value
        ]
        if len(sources) > 1:
            raise SettingsError(
                f"{' and '.join(sources)} are set together; set exactly one of JWT_SECRET, "
                "JWT_PUBLIC_KEY_FILE or JWT_JWKS_FILE."
            )
        if not sources and settings.auth_mode == "jwt":
            raise SettingsError(
                "AUTH_MODE=jwt needs one of JWT_SECRET, JWT_PUBLIC_KEY_FILE or JWT_JWKS_FILE "
                "(or AUTH_MODE=none for local use)."
            )
        user_key: Key | None = None
        jwks: KeySet = ()
        if settings.jwt_secret:
            user_key = Key(hs256_secret(settings.jwt_secret, "JWT_SECRET"), "HS256")
        elif settings.jwt_public_key_file:
            user_key = key_file(settings.jwt_public_key_file)
        elif settings.jwt_jwks_file:
            # Read once, here: a rotated JWKS takes a restart (re-reading is not implemented).
            jwks = jwks_file(settings.jwt_jwks_file)
        # Watch tokens are ours alone: their own secret, else the user secret when there is one.
        watch: bytes | None = None
        if settings.watch_token_secret:
            watch = hs256_secret(settings.watch_token_secret, "WATCH_TOKEN_SECRET")
        elif settings.jwt_secret:
            watch = hs256_secret(settings.jwt_secret, "JWT_SECRET")
        return cls(settings, user_key=user_key, jwks=jwks, watch_secret=watch)

    def verify(self, token: str, *, now: datetime | None = None) -> Principal:
        """The caller a user token or a watch token proves; Unauthenticated otherwise."""
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("The token is too large.")
        if not token.isascii():
            raise Unauthenticated(_INVALID)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated(_INVALID) from None
        leeway = self._settings.jwt_leeway_seconds
        # The header only routes the token; what it routes to checks it with fixed rules.
        if _is_watch_type(header.get("typ")):
            if self._watch_key is None:
                raise Unauthenticated("Watch tokens are not accepted here.")
            claims = self._decode(token, self._watch_key, watch=True, now=now)
            task_id = _task_id(claims["tid"])
            return Principal.watcher(claims["sub"], task_id, _expiry(claims["exp"], leeway))
        claims = self._decode(token, self._select(header), watch=False, now=now)
        return Principal(subject=claims["sub"], expires_at=_expiry(claims["exp"], leeway))

    def mint_watch_token(
        self, subject: str, task_id: UUID, *, now: datetime | None = None
    ) -> str | None:
        """A token that may only read `task_id`, or None when no watch secret is configured."""
        if self._watch_secret is None:
            return None
        issued = int(_seconds(now))
        claims = {
            "iss": self._settings.jwt_issuer,
            "sub": _checked_subject(subject),
            "aud": f"{self._settings.jwt_audience}:watch",
            "tid": str(task_id),
            "iat": issued,
            "exp": issued + self._settings.watch_token_ttl_seconds,
            "jti": secrets.token_urlsafe(16),
        }
        return jwt.encode(
            claims, self._watch_secret, algorithm="HS256", headers={"typ": WATCH_TOKEN_TYPE}
        )

    def _select(self, header: dict[str, Any]) -> Key:
        """The configured key for a user token: kid only picks among keys we already trust."""
        if self._user_key is not None:
            return self._user_key
        if not self._jwks:
            raise Unauthenticated(_INVALID)
        kid = header.get("kid")
        if kid is None:
            if len(self._jwks) == 1:
                return self._jwks[0][1]
            raise Unauthenticated("The token does not name its signing key (kid).")
        for key_id, key in self._jwks:
            if key_id is not None and key_id == kid:
                return key
        raise Unauthenticated("The token's signing key is not known.")

    def _decode(self, token: str, key: Key, *, watch: bool, now: datetime | None) -> dict[str, Any]:
        settings = self._settings
        audience = f"{settings.jwt_audience}:watch" if watch else settings.jwt_audience
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=audience,
                issuer=settings.jwt_issuer,
                options={
                    "require": [*_REQUIRED, "tid"] if watch else list(_REQUIRED),
                    # Times are checked below against `now`, which tests can set.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "strict_aud": watch,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"The token lacks the '{exc.claim}' claim.") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthenticated("The token's algorithm is not accepted.") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("The token's audience is not accepted.") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("The token's issuer is not accepted.") from None
        except InvalidSubjectError:
            raise Unauthenticated("The token's subject is not valid.") from None
        except jwt.PyJWTError:
            raise Unauthenticated(_INVALID) from None
        _check_times(claims, _seconds(now), settings.jwt_leeway_seconds)
        try:
            _checked_subject(claims["sub"])
        except ValueError:
            raise Unauthenticated("The token's subject is not valid.") from None
        return claims


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` value (RFC 6750)."""
    if header is None or not header.strip():
        raise Unauthenticated("A bearer token is required.")
    parts = header.split(" ")
    if parts[0].lower() != "bearer":
        raise Unauthenticated("The Authorization header must use the Bearer scheme.")
    if len(parts) != 2 or not parts[1]:
        raise Unauthenticated("The Authorization header must be 'Bearer <token>'.")
    return parts[1]


def mint_token(
    settings: Settings, subject: str, *, ttl_seconds: int, now: datetime | None = None
) -> str:
    """A user token signed HS256 with JWT_SECRET (what `taskwire token` prints)."""
    if not settings.jwt_secret:
        raise SettingsError("JWT_SECRET is not set; minting a token needs the HS256 secret.")
    if ttl_seconds < 1:
        raise ValueError("the lifetime must be at least one second")
    issued = int(_seconds(now))
    claims = {
        "iss": settings.jwt_issuer,
        "sub": _checked_subject(subject),
        "aud": settings.jwt_audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_seconds,
        "jti": secrets.token_urlsafe(16),
    }
    return jwt.encode(claims, hs256_secret(settings.jwt_secret, "JWT_SECRET"), algorithm="HS256")


def _task_id(value: object) -> UUID:
    try:
        if isinstance(value, str):
            return UUID(value)
    except ValueError:
        pass
    raise Unauthenticated(_INVALID)


def _is_watch_type(typ: object) -> bool:
    # RFC 7515 §4.1.9: typ compares case-insensitively and may omit "application/".
    if not isinstance(typ, str):
        return False
    return typ.lower().removeprefix("application/") == WATCH_TOKEN_TYPE


def _seconds(now: datetime | None) -> float:
    return (now or datetime.now(UTC)).timestamp()


def _check_times(claims: dict[str, Any], now: float, leeway: float) -> None:
    exp = _numeric_date(claims, "exp")
    nbf = _numeric_date(claims, "nbf")
    iat = _numeric_date(claims, "iat")
    if exp is not None and now >= exp + leeway:
        raise Unauthenticated("The token has expired.")
    if (nbf is not None and nbf > now + leeway) or (iat is not None and iat > now + leeway):
        raise Unauthenticated("The token is not valid yet.")


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(name)
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError(name)
        # Out of datetime's range (year 1..9999) is no date we can honour.
        datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        raise Unauthenticated(f"The token's '{name}' claim is not a date.") from None
    return seconds


def _expiry(exp: float, leeway: float) -> datetime:
    try:
        return datetime.fromtimestamp(exp, UTC) + timedelta(seconds=leeway)
    except OverflowError:
        raise Unauthenticated(_INVALID) from None


def _checked_subject(subject: object) -> str:
    # sub becomes a task's owner: no control characters (PostgreSQL refuses NUL), bounded.
    if (
        not isinstance(subject, str)
        or not 0 < len(subject) <= MAX_SUBJECT_CHARS
        or not subject.isprintable()
    ):
        raise ValueError(f"the subject must be 1 to {MAX_SUBJECT_CHARS} printable characters")
    return subject
