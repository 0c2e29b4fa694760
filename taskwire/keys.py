"""The keys that tokens are checked with, read from the configuration: an HS256 secret, a PEM
public key file or a JWKS file. Each key is pinned to the one algorithm its type allows
(RFC 8725 §3.1), and whatever is unfit to verify with is a SettingsError naming the variable.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from taskwire.errors import SettingsError

log = logging.getLogger(__name__)

MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048
# JWK members that only a private (or symmetric) key has: such a key has no place on a server
# that only verifies.
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


@dataclass(frozen=True, slots=True)
class Key:
    """A verification key and the one algorithm it may be used with."""

    key: bytes | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    algorithm: str


# The keys of a JWKS with their kids (None when a lone key names none), in the file's order.
KeySet = tuple[tuple[str | None, Key], ...]


def hs256_secret(value: str, name: str) -> bytes:
    """The bytes of an HS256 secret from variable `name`, refused when short or a PEM key."""
    raw = value.encode()
    if "-----BEGIN" in value:
        raise SettingsError(
            f"{name} looks like a PEM key; put a public key in JWT_PUBLIC_KEY_FILE instead."
        )
    if len(raw) < MIN_SECRET_BYTES:
        raise SettingsError(
            f"{name} must be at least {MIN_SECRET_BYTES} bytes (it has {len(raw)}); make one "
            'with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
        )
    return raw


def key_file(path: str) -> Key:
    """The RSA or Ed25519 public key in the PEM file JWT_PUBLIC_KEY_FILE names."""
    name = "JWT_PUBLIC_KEY_FILE"
    data = _read(path, name)
    if b"PRIVATE KEY" in data:
        raise SettingsError(f"{name}: {path} holds a private key; give the public key only.")
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SettingsError(f"{name}: {path} is not a PEM public key.") from None
    return _pinned(key, f"{name}: {path}")


def jwks_file(path: str) -> KeySet:
    """The signing keys of the JWK set JWT_JWKS_FILE names; keys of other kinds are skipped
    with a warning, but private key material or an unusable set is refused."""
    name = "JWT_JWKS_FILE"
    try:
        document = json.loads(_read(path, name))
    except (ValueError, RecursionError):
        raise SettingsError(f"{name}: {path} is not valid JSON.") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise SettingsError(f'{name}: {path} is not a JWK set (an object with a "keys" list).')
    keys: list[tuple[str | None, Key]] = []
    for index, jwk in enumerate(document["keys"]):
        kid = jwk.get("kid") if isinstance(jwk, dict) else None
        where = f"{name}: key {kid if isinstance(kid, str) else f'#{index}'} of {path}"
        if not isinstance(jwk, dict) or not (kid is None or isinstance(kid, str)):
            raise SettingsError(f"{where} is not a JWK with a string kid.")
        if _PRIVATE_JWK_MEMBERS & jwk.keys():
            raise SettingsError(f"{where} holds private key material; publish public keys only.")
        usable = _jwk_algorithm(jwk)
        if jwk.get("use", "sig") != "sig" or usable is None:
            log.warning("%s is not an RSA or Ed25519 signing key; ignored", where)
            continue
        try:
            key = jwt.PyJWK(jwk, algorithm=usable).key
        except jwt.PyJWTError:
            raise SettingsError(f"{where} is not a valid public key.") from None
        keys.append((kid, _pinned(key, where)))
    if not keys:
        raise SettingsError(
            f"{name}: {path} holds no usable signing key (RSA of {MIN_RSA_BITS} bits or more, "
            "or Ed25519)."
        )
    kids = [kid for kid, _ in keys]
    if len(keys) > 1 and (None in kids or len(set(kids)) != len(kids)):
        raise SettingsError(f"{name}: {path} has several keys; each needs its own kid.")
    return tuple(keys)


def _pinned(key: object, where: str) -> Key:
    """The algorithm follows from the key's type: RS256 for RSA, EdDSA for Ed25519."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise SettingsError(
                f"{where} is a {key.key_size}-bit RSA key; at least {MIN_RSA_BITS} bits needed."
            )
        return Key(key, "RS256")
    if isinstance(key, ed25519.Ed25519PublicKey):
        return Key(key, "EdDSA")
    raise SettingsError(f"{where} must be an RSA (2048 bits or more) or Ed25519 public key.")


def _read(path: str, name: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"{name}: cannot read {path} ({exc.strerror or exc}).") from None


def _jwk_algorithm(jwk: dict[str, Any]) -> str | None:
    """The key's type decides; a stated `alg` must agree (else the key is not used)."""
    if jwk.get("kty") == "RSA":
        algorithm = "RS256"
    elif jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
        algorithm = "EdDSA"
    else:
        return None
    return algorithm if jwk.get("alg", algorithm) == algorithm else None
