"""Bearer tokens: the algorithm is pinned by the key, every bad token is refused with a short
message that repeats nothing of the token, and user and watch tokens never stand in for each
other (RFC 8725, OWASP JWT cheat sheet)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

from taskwire.errors import SettingsError, Unauthenticated
from taskwire.settings import Settings
from taskwire.tokens import WATCH_TOKEN_TYPE, TokenVerifier, bearer_token, mint_token

NOW = datetime(2030, 1, 1, tzinfo=UTC)
T = int(NOW.timestamp())
SECRET = "user-secret-0123456789-abcdefghijklmnop"
WATCH_SECRET = "watch-secret-0123456789-abcdefghijklmno"
TASK = UUID("6f1c1d5e-8a38-4e0e-9d6f-4a1b2c3d4e5f")
BASE = Settings(jwt_audience="taskwire", jwt_issuer="https://issuer.test", jwt_leeway_seconds=30)


@cache
def rsa_key(bits: int = 2048, which: int = 0) -> rsa.RSAPrivateKey:
    # RSA generation is slow: one key per (size, slot) for the whole module.
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@cache
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_pem(private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims(**changes: Any) -> dict[str, Any]:
    """Good user claims; a change to None removes the claim."""
    body: dict[str, Any] = {
        "sub": "alice",
        "aud": "taskwire",
        "iss": "https://issuer.test",
        "iat": T,
        "exp": T + 600,
    }
    body.update(changes)
    return {name: value for name, value in body.items() if value is not None}


def watch_claims(**changes: Any) -> dict[str, Any]:
    return claims(**{"aud": "taskwire:watch", "tid": str(TASK), **changes})


def hs(body: dict[str, Any], secret: str = SECRET, **headers: Any) -> str:
    return jwt.encode(body, secret, algorithm="HS256", headers=headers or None)


def watch(body: dict[str, Any] | None = None, secret: str = WATCH_SECRET) -> str:
    return hs(body or watch_claims(), secret, typ=WATCH_TOKEN_TYPE)


def forge(header: dict[str, Any], body: Any, hmac_key: bytes | None) -> str:
    """A token built by hand, as an attacker would (PyJWT refuses to sign these)."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{part(json.dumps(header).encode())}.{part(json.dumps(body).encode())}"
    signature = b""
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{part(signature)}"


@dataclass(frozen=True)
class Configs:
    secret: Settings  # JWT_SECRET, watch tokens signed with it too
    split: Settings  # JWT_SECRET plus its own WATCH_TOKEN_SECRET
    rsa: Settings  # JWT_PUBLIC_KEY_FILE (RSA), no watch secret
    ed: Settings  # JWT_PUBLIC_KEY_FILE (Ed25519), with WATCH_TOKEN_SECRET
    jwks: Settings  # JWT_JWKS_FILE: RSA kid "r1" and Ed25519 kid "e1"


def write_jwks(path: Path, *keys: dict[str, Any]) -> str:
    path.write_text(json.dumps({"keys": list(keys)}))
    return str(path)


def rsa_jwk(kid: str | None = "r1", key: rsa.RSAPrivateKey | None = None, **extra: Any) -> Any:
    jwk = RSAAlgorithm.to_jwk((key or rsa_key()).public_key(), as_dict=True)
    return {**jwk, **({"kid": kid} if kid else {}), **extra}


def ed_jwk(kid: str = "e1", **extra: Any) -> Any:
    return {**OKPAlgorithm.to_jwk(ed_key().public_key(), as_dict=True), "kid": kid, **extra}


@pytest.fixture
def configs(tmp_path: Path) -> Configs:
    (tmp_path / "rsa.pem").write_bytes(public_pem(rsa_key()))
    (tmp_path / "ed.pem").write_bytes(public_pem(ed_key()))
    return Configs(
        secret=replace(BASE, jwt_secret=SECRET),
        split=replace(BASE, jwt_secret=SECRET, watch_token_secret=WATCH_SECRET),
        rsa=replace(BASE, jwt_public_key_file=str(tmp_path / "rsa.pem")),
        ed=replace(
            BASE, jwt_public_key_file=str(tmp_path / "ed.pem"), watch_token_secret=WATCH_SECRET
        ),
        jwks=replace(BASE, jwt_jwks_file=write_jwks(tmp_path / "jwks.json", rsa_jwk(), ed_jwk())),
    )


def rs(body: dict[str, Any], key: rsa.RSAPrivateKey | None = None, **headers: Any) -> str:
    return jwt.encode(body, key or rsa_key(), algorithm="RS256", headers=headers or None)


def ed(body: dict[str, Any], **headers: Any) -> str:
    return jwt.encode(body, ed_key(), algorithm="EdDSA", headers=headers or None)


INVALID = "The token is not valid."
ALGORITHM = "The token's algorithm is not accepted."
AUDIENCE = "The token's audience is not accepted."
SUBJECT = "The token's subject is not valid."

BAD: list[tuple[str, str, Callable[[], str], str]] = [
    # (id, config, token, message)
    ("alg-none", "secret", lambda: forge({"alg": "none", "typ": "JWT"}, claims(), None), ALGORITHM),
    ("alg-none-rsa", "rsa", lambda: forge({"alg": "none"}, claims(), None), ALGORITHM),
    (
        "alg-confusion-public-key-as-hmac-secret",
        "rsa",
        lambda: forge({"alg": "HS256", "typ": "JWT"}, claims(), public_pem(rsa_key())),
        ALGORITHM,
    ),
    ("rs256-against-a-secret", "secret", lambda: rs(claims()), ALGORITHM),
    ("eddsa-against-rsa", "rsa", lambda: ed(claims()), ALGORITHM),
    (
        "hs512-against-a-secret",
        "secret",
        lambda: jwt.encode(claims(), SECRET * 2, "HS512"),
        ALGORITHM,
    ),
    (
        "wrong-secret",
        "secret",
        lambda: hs(claims(), "another-secret-0123456789-abcdefghij"),
        INVALID,
    ),
    ("wrong-rsa-key", "rsa", lambda: rs(claims(), rsa_key(2048, 1)), INVALID),
    (
        "tampered-payload",
        "secret",
        lambda: ".".join(
            (
                (good := hs(claims())).split(".")[0],
                hs(claims(sub="mallory")).split(".")[1],
                good.split(".")[2],
            )
        ),
        INVALID,
    ),
    ("expired", "secret", lambda: hs(claims(exp=T - 31)), "The token has expired."),
    ("nbf-in-future", "secret", lambda: hs(claims(nbf=T + 31)), "The token is not valid yet."),
    ("iat-in-future", "secret", lambda: hs(claims(iat=T + 31)), "The token is not valid yet."),
    (
        "exp-not-a-number",
        "secret",
        lambda: hs(claims(exp="soon")),
        "The token's 'exp' claim is not a date.",
    ),
    (
        "exp-out-of-range",
        "secret",
        lambda: hs(claims(exp=10**20)),
        "The token's 'exp' claim is not a date.",
    ),
    ("missing-exp", "secret", lambda: hs(claims(exp=None)), "The token lacks the 'exp' claim."),
    ("missing-sub", "secret", lambda: hs(claims(sub=None)), "The token lacks the 'sub' claim."),
    ("missing-aud", "secret", lambda: hs(claims(aud=None)), "The token lacks the 'aud' claim."),
    ("missing-iss", "secret", lambda: hs(claims(iss=None)), "The token lacks the 'iss' claim."),
    ("wrong-aud", "secret", lambda: hs(claims(aud="someone-else")), AUDIENCE),
    ("aud-list-without-ours", "secret", lambda: hs(claims(aud=["a", "b"])), AUDIENCE),
    (
        "wrong-iss",
        "secret",
        lambda: hs(claims(iss="https://evil.test")),
        "The token's issuer is not accepted.",
    ),
    ("empty-sub", "secret", lambda: hs(claims(sub="")), SUBJECT),
    ("sub-too-long", "secret", lambda: hs(claims(sub="a" * 201)), SUBJECT),
    ("sub-not-a-string", "secret", lambda: hs(claims(sub=42)), SUBJECT),
    ("sub-with-nul", "secret", lambda: hs(claims(sub="al\x00ice")), SUBJECT),
    ("garbage", "secret", lambda: "not-a-token", INVALID),
    ("garbage-three-parts", "secret", lambda: "a.b.c", INVALID),
    ("empty", "secret", lambda: "", INVALID),
    ("not-ascii", "secret", lambda: hs(claims()) + "é", INVALID),
    (
        "payload-not-an-object",
        "secret",
        lambda: forge({"alg": "HS256"}, [1], SECRET.encode()),
        INVALID,
    ),
    ("oversize", "secret", lambda: hs(claims(pad="x" * 8192)), "The token is too large."),
    # A watch token that lost its type (re-signed, as only a key holder could) is still no
    # user token: its audience is the watch audience, or its key is the watch key.
    (
        "watch-token-as-user-token-shared-secret",
        "secret",
        lambda: hs(watch_claims(), SECRET, typ="JWT"),
        AUDIENCE,
    ),
    (
        "watch-token-as-user-token-split-secret",
        "split",
        lambda: hs(watch_claims(), WATCH_SECRET, typ="JWT"),
        INVALID,
    ),
    (
        "user-token-as-watch-token",
        "secret",
        lambda: watch(claims(), SECRET),
        "The token lacks the 'tid' claim.",
    ),
    (
        "user-token-with-tid-as-watch-token",
        "secret",
        lambda: watch(claims(tid=str(TASK)), SECRET),
        AUDIENCE,
    ),
    (
        "user-secret-signing-a-watch-token",
        "split",
        lambda: watch(watch_claims(), SECRET),
        INVALID,
    ),
    (
        "watch-token-aud-list",
        "split",
        lambda: watch(watch_claims(aud=["taskwire:watch"])),
        AUDIENCE,
    ),
    ("watch-token-bad-tid", "split", lambda: watch(watch_claims(tid="nope")), INVALID),
    ("watch-token-tid-not-a-string", "split", lambda: watch(watch_claims(tid=7)), INVALID),
    (
        "watch-token-expired",
        "split",
        lambda: watch(watch_claims(exp=T - 31)),
        "The token has expired.",
    ),
    (
        "watch-token-type-in-other-case",
        "split",
        lambda: hs(claims(), SECRET, typ="application/Taskwire-Watch+JWT"),
        INVALID,
    ),
    (
        "watch-token-for-a-secret-less-config",
        "rsa",
        lambda: watch(),
        "Watch tokens are not accepted here.",
    ),
    ("rs256-watch-token", "ed", lambda: rs(watch_claims(), typ=WATCH_TOKEN_TYPE), ALGORITHM),
    (
        "jwks-unknown-kid",
        "jwks",
        lambda: rs(claims(), kid="r9"),
        "The token's signing key is not known.",
    ),
    (
        "jwks-kid-not-a-string",
        "jwks",
        lambda: forge({"alg": "RS256", "kid": ["r1"]}, claims(), None),
        INVALID,
    ),
    (
        "jwks-missing-kid-with-two-keys",
        "jwks",
        lambda: rs(claims()),
        "The token does not name its signing key (kid).",
    ),
    ("jwks-kid-of-the-other-key-type", "jwks", lambda: rs(claims(), kid="e1"), ALGORITHM),
    ("jwks-right-kid-wrong-key", "jwks", lambda: rs(claims(), rsa_key(2048, 1), kid="r1"), INVALID),
]


@pytest.mark.parametrize(
    ("config", "make", "message"), [pytest.param(*row[1:], id=row[0]) for row in BAD]
)
def test_bad_tokens_are_refused(
    configs: Configs, config: str, make: Callable[[], str], message: str
) -> None:
    verifier = TokenVerifier.from_settings(getattr(configs, config))
    token = make()
    with pytest.raises(Unauthenticated) as refused:
        verifier.verify(token, now=NOW)
    assert refused.value.message == message
    assert refused.value.code == "UNAUTHENTICATED"
    # Nothing of the token comes back to the client.
    for piece in [*token.split("."), "alice", "mallory", "someone-else", "evil"]:
        assert len(piece) < 4 or piece not in refused.value.message


@pytest.mark.parametrize(
    ("config", "make", "algorithm"),
    [
        pytest.param("secret", lambda: hs(claims()), "HS256", id="hs256-secret"),
        pytest.param("split", lambda: hs(claims()), "HS256", id="hs256-with-watch-secret"),
        pytest.param("rsa", lambda: rs(claims()), "RS256", id="rs256-key-file"),
        pytest.param("rsa", lambda: rs(claims(), kid="anything"), "RS256", id="rs256-kid-ignored"),
        pytest.param("ed", lambda: ed(claims()), "EdDSA", id="eddsa-key-file"),
        pytest.param("jwks", lambda: rs(claims(), kid="r1"), "RS256", id="jwks-rsa-by-kid"),
        pytest.param("jwks", lambda: ed(claims(), kid="e1"), "EdDSA", id="jwks-ed25519-by-kid"),
        pytest.param(
            "secret", lambda: hs(claims(aud=["other", "taskwire"])), "HS256", id="aud-list"
        ),
        pytest.param("secret", lambda: hs(claims(typ="at+jwt")), "HS256", id="other-typ"),
    ],
)
def test_good_tokens_name_their_subject(
    configs: Configs, config: str, make: Callable[[], str], algorithm: str
) -> None:
    token = make()
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    principal = TokenVerifier.from_settings(getattr(configs, config)).verify(token, now=NOW)
    assert principal.subject == "alice"
    assert principal.may_write
    assert principal.task_id is None
    assert not principal.unrestricted
    # The leeway is part of the lifetime, as it is of the exp check.
    assert principal.expires_at == NOW + timedelta(seconds=600 + 30)


def test_the_leeway_admits_a_little_clock_skew(configs: Configs) -> None:
    verifier = TokenVerifier.from_settings(configs.secret)
    assert verifier.verify(hs(claims(exp=T - 29, nbf=T + 29, iat=T + 29)), now=NOW)
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(hs(claims(exp=T - 30)), now=NOW)


def test_a_jwks_with_one_key_needs_no_kid(tmp_path: Path) -> None:
    settings = replace(BASE, jwt_jwks_file=write_jwks(tmp_path / "one.json", rsa_jwk(kid=None)))
    verifier = TokenVerifier.from_settings(settings)
    assert verifier.verify(rs(claims()), now=NOW).subject == "alice"


def test_a_jwks_skips_keys_it_cannot_use(tmp_path: Path) -> None:
    other = rsa_key(2048, 1)
    path = write_jwks(
        tmp_path / "mixed.json",
        rsa_jwk("enc", other, use="enc"),
        rsa_jwk("ps", other, alg="PS256"),
        {"kty": "EC", "crv": "P-256", "kid": "ec", "x": "AAAA", "y": "AAAA"},
        rsa_jwk("r1", alg="RS256", use="sig"),
    )
    verifier = TokenVerifier.from_settings(replace(BASE, jwt_jwks_file=path))
    assert verifier.verify(rs(claims(), kid="r1"), now=NOW).subject == "alice"
    for kid in ("enc", "ps", "ec"):
        with pytest.raises(Unauthenticated, match="signing key is not known"):
            verifier.verify(rs(claims(), other, kid=kid), now=NOW)


@pytest.mark.parametrize("config", ["secret", "split", "ed"])
def test_a_watch_token_reads_one_task_only(configs: Configs, config: str) -> None:
    settings = getattr(configs, config)
    verifier = TokenVerifier.from_settings(settings)
    token = verifier.mint_watch_token("alice", TASK, now=NOW)
    assert token is not None
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["typ"]) == ("HS256", WATCH_TOKEN_TYPE)
    body = jwt.decode(token, options={"verify_signature": False})
    assert body["aud"] == "taskwire:watch"
    assert body["exp"] - body["iat"] == settings.watch_token_ttl_seconds
    assert body["jti"]
    principal = verifier.verify(token, now=NOW)
    assert (principal.subject, principal.task_id) == ("alice", TASK)
    assert not principal.may_write
    assert principal.expires_at == NOW + timedelta(seconds=settings.watch_token_ttl_seconds + 30)
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(token, now=NOW + timedelta(seconds=settings.watch_token_ttl_seconds + 30))


def test_no_watch_tokens_without_a_secret(configs: Configs) -> None:
    assert TokenVerifier.from_settings(configs.rsa).mint_watch_token("alice", uuid4()) is None
    assert TokenVerifier.from_settings(configs.jwks).mint_watch_token("alice", uuid4()) is None


def test_a_minted_user_token_verifies(configs: Configs) -> None:
    token = mint_token(configs.secret, "alice", ttl_seconds=3600, now=NOW)
    body = jwt.decode(token, options={"verify_signature": False})
    assert {"sub", "aud", "iss", "iat", "nbf", "exp", "jti"} <= body.keys()
    principal = TokenVerifier.from_settings(configs.secret).verify(token, now=NOW)
    assert principal.subject == "alice"
    assert principal.expires_at == NOW + timedelta(seconds=3600 + 30)
    # Two tokens minted at the same second still differ (jti).
    assert token != mint_token(configs.secret, "alice", ttl_seconds=3600, now=NOW)


def test_minting_refuses_a_bad_subject_or_lifetime(configs: Configs) -> None:
    with pytest.raises(ValueError, match="subject"):
        mint_token(configs.secret, "", ttl_seconds=60)
    with pytest.raises(ValueError, match="second"):
        mint_token(configs.secret, "alice", ttl_seconds=0)
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        mint_token(configs.rsa, "alice", ttl_seconds=60)
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        mint_token(replace(BASE, jwt_secret="short"), "alice", ttl_seconds=60)


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc.def.ghi", "abc.def.ghi"), ("bearer abc", "abc"), ("BEARER abc", "abc")],
)
def test_bearer_token_reads_the_authorization_header(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "A bearer token is required."),
        ("", "A bearer token is required."),
        ("   ", "A bearer token is required."),
        ("Basic YWxpY2U6cHc=", "The Authorization header must use the Bearer scheme."),
        ("abc.def.ghi", "The Authorization header must use the Bearer scheme."),
        ("Bearer", "The Authorization header must be 'Bearer <token>'."),
        ("Bearer ", "The Authorization header must be 'Bearer <token>'."),
        ("Bearer  abc", "The Authorization header must be 'Bearer <token>'."),
        ("Bearer abc def", "The Authorization header must be 'Bearer <token>'."),
    ],
)
def test_bearer_token_refuses_other_headers(header: str | None, message: str) -> None:
    with pytest.raises(Unauthenticated) as refused:
        bearer_token(header)
    assert refused.value.message == message


def _pem(tmp_path: Path, name: str, data: bytes) -> str:
    (tmp_path / name).write_bytes(data)
    return str(tmp_path / name)


SETTINGS_ERRORS: list[tuple[str, Callable[[Path], Settings], str]] = [
    ("no-key", lambda p: BASE, "JWT_SECRET"),
    (
        "two-keys",
        lambda p: replace(BASE, jwt_secret=SECRET, jwt_jwks_file=str(p / "x.json")),
        "JWT_SECRET and JWT_JWKS_FILE",
    ),
    (
        "short-secret",
        lambda p: replace(BASE, jwt_secret="s" * 31),
        "JWT_SECRET must be at least 32",
    ),
    (
        "short-multibyte-secret-counts-bytes",
        lambda p: replace(BASE, jwt_secret="é" * 15),
        "JWT_SECRET must be at least 32 bytes (it has 30)",
    ),
    (
        "pem-as-secret",
        lambda p: replace(BASE, jwt_secret=public_pem(rsa_key()).decode()),
        "JWT_SECRET looks like a PEM key",
    ),
    (
        "short-watch-secret",
        lambda p: replace(BASE, jwt_secret=SECRET, watch_token_secret="w" * 31),
        "WATCH_TOKEN_SECRET must be at least 32",
    ),
    ("empty-audience", lambda p: replace(BASE, jwt_secret=SECRET, jwt_audience=""), "JWT_AUDIENCE"),
    (
        "key-file-missing",
        lambda p: replace(BASE, jwt_public_key_file=str(p / "missing.pem")),
        "JWT_PUBLIC_KEY_FILE: cannot read",
    ),
    (
        "key-file-not-pem",
        lambda p: replace(BASE, jwt_public_key_file=_pem(p, "k.pem", b"hello")),
        "JWT_PUBLIC_KEY_FILE: ",
    ),
    (
        "key-file-private-key",
        lambda p: replace(
            BASE,
            jwt_public_key_file=_pem(
                p,
                "private.pem",
                rsa_key().private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            ),
        ),
        "JWT_PUBLIC_KEY_FILE: ",
    ),
    (
        "key-file-rsa-1024",
        lambda p: replace(
            BASE, jwt_public_key_file=_pem(p, "small.pem", public_pem(rsa_key(1024)))
        ),
        "1024-bit RSA key",
    ),
    (
        "key-file-ec",
        lambda p: replace(
            BASE,
            jwt_public_key_file=_pem(
                p,
                "ec.pem",
                ec.generate_private_key(ec.SECP256R1())
                .public_key()
                .public_bytes(
                    serialization.Encoding.PEM,
                    serialization.PublicFormat.SubjectPublicKeyInfo,
                ),
            ),
        ),
        "JWT_PUBLIC_KEY_FILE: ",
    ),
    (
        "jwks-not-json",
        lambda p: replace(BASE, jwt_jwks_file=_pem(p, "bad.json", b"{not json")),
        "JWT_JWKS_FILE: ",
    ),
    (
        "jwks-not-a-set",
        lambda p: replace(BASE, jwt_jwks_file=_pem(p, "list.json", b"[]")),
        "JWT_JWKS_FILE: ",
    ),
    (
        "jwks-no-usable-key",
        lambda p: replace(BASE, jwt_jwks_file=write_jwks(p / "enc.json", rsa_jwk(use="enc"))),
        "holds no usable signing key",
    ),
    (
        "jwks-private-rsa",
        lambda p: replace(
            BASE,
            jwt_jwks_file=write_jwks(p / "priv.json", RSAAlgorithm.to_jwk(rsa_key(), as_dict=True)),
        ),
        "holds private key material",
    ),
    (
        "jwks-private-ed25519",
        lambda p: replace(
            BASE,
            jwt_jwks_file=write_jwks(p / "priv.json", OKPAlgorithm.to_jwk(ed_key(), as_dict=True)),
        ),
        "holds private key material",
    ),
    (
        "jwks-symmetric-key",
        lambda p: replace(
            BASE, jwt_jwks_file=write_jwks(p / "oct.json", {"kty": "oct", "k": "c2VjcmV0"})
        ),
        "holds private key material",
    ),
    (
        "jwks-duplicate-kid",
        lambda p: replace(
            BASE,
            jwt_jwks_file=write_jwks(p / "dup.json", rsa_jwk("k"), ed_jwk("k")),
        ),
        "each needs its own kid",
    ),
    (
        "jwks-rsa-1024",
        lambda p: replace(
            BASE, jwt_jwks_file=write_jwks(p / "small.json", rsa_jwk("s", rsa_key(1024)))
        ),
        "1024-bit RSA key",
    ),
]


@pytest.mark.parametrize(
    ("make", "expected"), [pytest.param(*row[1:], id=row[0]) for row in SETTINGS_ERRORS]
)
def test_bad_key_configuration_is_a_settings_error(
    tmp_path: Path, make: Callable[[Path], Settings], expected: str
) -> None:
    settings = make(tmp_path)
    with pytest.raises(SettingsError) as refused:
        TokenVerifier.from_settings(settings)
    assert expected in refused.value.message
    variables = ("JWT_SECRET", "JWT_PUBLIC_KEY_FILE", "JWT_JWKS_FILE", "WATCH_TOKEN_SECRET")
    assert any(name in refused.value.message for name in (*variables, "JWT_AUDIENCE"))


def test_auth_mode_none_needs_no_key() -> None:
    verifier = TokenVerifier.from_settings(replace(BASE, auth_mode="none"))
    assert verifier.mint_watch_token("local", TASK) is None
    with pytest.raises(Unauthenticated):
        verifier.verify(hs(claims()), now=NOW)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_claim_names = st.sampled_from(["sub", "aud", "iss", "exp", "nbf", "iat", "tid", "jti"])
_header_names = st.sampled_from(["alg", "typ", "kid", "crit", "b64", "jwk", "jku"])


@examples(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.dictionaries(_header_names, _json | st.sampled_from(["HS256", WATCH_TOKEN_TYPE])),
    # Mostly good claims with some replaced, so that the checks after the required ones run.
    body=st.dictionaries(_claim_names, _json).map(lambda changes: {**claims(), **changes})
    | st.dictionaries(_claim_names, _json)
    | _json,
    text=st.text(max_size=50),
)
def test_whatever_arrives_is_a_principal_or_unauthenticated(
    header: dict[str, Any], body: Any, text: str
) -> None:
    # Signed with the real secret, so the claim and header checks, not the signature, decide.
    verifier = TokenVerifier.from_settings(replace(BASE, jwt_secret=SECRET))
    for token in (forge({"alg": "HS256", **header}, body, SECRET.encode()), text):
        try:
            principal = verifier.verify(token, now=NOW)
        except Unauthenticated:
            continue
        assert isinstance(principal.subject, str)
        assert principal.subject
