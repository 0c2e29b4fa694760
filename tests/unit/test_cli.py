"""The command line refuses bad configuration at start with one clear line."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from taskwire.cli import _dev_settings, _is_loopback, main
from taskwire.settings import Settings
from taskwire.tokens import TokenVerifier


@pytest.mark.parametrize("command", ["api", "processor"])
@pytest.mark.parametrize("variable", ["RABBITMQ_URL", "REDIS_URL"])
def test_separate_processes_refuse_in_process_transports(
    command: str, variable: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:1/")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv(variable, "memory://")
    assert main([command]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1
    assert message.startswith(
        f"taskwire {command}: {variable}=memory:// only works inside `taskwire dev`"
    )


def test_a_bad_value_stops_the_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TASK_DELAY_SECONDS", "soon")
    assert main(["dev"]) == 2
    assert capsys.readouterr().err.strip() == (
        "taskwire dev: TASK_DELAY_SECONDS: must be a number (got 'soon')"
    )


def test_schema_prints_the_sdl(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert "taskUpdated(id: ID!): Task!" in capsys.readouterr().out


def test_an_unmigrated_database_is_refused_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    monkeypatch.setenv("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:1/")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["processor"]) == 2
    assert re.fullmatch(
        r"taskwire processor: the database schema lacks \d+ migration\(s\); "
        r"run `taskwire migrate` first",
        capsys.readouterr().err.strip(),
    )


@pytest.mark.parametrize(
    ("module", "command"), [("graphql_api", "api"), ("processor", "processor")]
)
def test_the_packages_run_as_modules(module: str, command: str) -> None:
    env = {**os.environ, "RABBITMQ_URL": "memory://"}
    done = subprocess.run(
        [sys.executable, "-m", module],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"taskwire {command}: RABBITMQ_URL=memory://")


SECRET = "cli-test-secret-0123456789-abcdefghijkl"
AUTH_VARIABLES = (
    "AUTH_MODE",
    "INTROSPECTION",
    "JWT_SECRET",
    "JWT_PUBLIC_KEY_FILE",
    "JWT_JWKS_FILE",
)


@pytest.fixture
def clean_auth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No auth variables from the outer environment, and a database nobody else uses."""
    for name in AUTH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    return monkeypatch


@pytest.mark.parametrize(
    ("ttl", "seconds"),
    [("3600", 3600), ("30s", 30), ("15m", 900), ("1h", 3600), ("7d", 604800), ("30d", 2592000)],
)
def test_token_prints_a_token_the_api_accepts(
    ttl: str, seconds: int, clean_auth: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_auth.setenv("JWT_SECRET", SECRET)
    assert main(["token", "--sub", "alice", "--ttl", ttl]) == 0
    token = capsys.readouterr().out.strip()
    principal = TokenVerifier.from_settings(Settings.from_env(os.environ)).verify(token)
    assert principal.subject == "alice"
    assert principal.may_write
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == seconds


def test_token_lasts_an_hour_by_default(
    clean_auth: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_auth.setenv("JWT_SECRET", SECRET)
    assert main(["token", "--sub", "alice"]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 3600


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--sub", "alice", "--ttl", "31d"], "taskwire token: --ttl 31d: give 1 second to 30 days"),
        (["--sub", "alice", "--ttl", "0"], "taskwire token: --ttl 0: give 1 second to 30 days"),
        (["--sub", "alice", "--ttl", "2w"], "taskwire token: --ttl 2w: give 1 second to 30 days"),
        (["--sub", "alice", "--ttl", "-5"], "taskwire token: --ttl -5: give 1 second to 30 days"),
        (["--sub", ""], "taskwire token: the subject must be 1 to 200 printable characters"),
        (["--sub", "a" * 201], "taskwire token: the subject must be 1 to 200 printable characters"),
    ],
)
def test_token_refuses_bad_arguments(
    args: list[str],
    expected: str,
    clean_auth: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clean_auth.setenv("JWT_SECRET", SECRET)
    assert main(["token", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(expected)


def test_token_needs_the_secret(
    clean_auth: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "--sub", "alice"]) == 2
    assert capsys.readouterr().err.startswith("taskwire token: JWT_SECRET is not set")


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "192.168.1.10", "example.com", "::ffff:127.0.0.1"]
)
def test_dev_without_auth_refuses_to_listen_beyond_loopback(
    host: str, clean_auth: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dev", "--host", host]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1
    assert message.startswith(f"taskwire dev: --host {host} with AUTH_MODE=none would let anyone")
    # Refused before anything was started or created.
    assert not (tmp_path / "cli.db").exists()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("LocalHost", True),
        ("0.0.0.0", False),
        ("128.0.0.1", False),
        ("::", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert _is_loopback(host) is loopback


def test_dev_defaults_to_no_auth_and_introspection_unless_set() -> None:
    jwt_settings = Settings(auth_mode="jwt", introspection=False)
    dev = _dev_settings(jwt_settings, {})
    assert (dev.auth_mode, dev.introspection) == ("none", True)
    kept = _dev_settings(jwt_settings, {"AUTH_MODE": "jwt", "INTROSPECTION": "false"})
    assert (kept.auth_mode, kept.introspection) == ("jwt", False)


def test_dev_with_jwt_checks_the_key_configuration_first(
    clean_auth: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # AUTH_MODE=jwt from the environment wins over dev's default, and so does its key check.
    clean_auth.setenv("AUTH_MODE", "jwt")
    assert main(["dev", "--host", "0.0.0.0"]) == 2
    assert capsys.readouterr().err.startswith("taskwire dev: AUTH_MODE=jwt needs one of JWT_SECRET")
    assert not (tmp_path / "cli.db").exists()


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, "taskwire api: AUTH_MODE=jwt needs one of JWT_SECRET"),
        ({"JWT_SECRET": "too-short"}, "taskwire api: JWT_SECRET must be at least 32 bytes"),
        (
            {"JWT_PUBLIC_KEY_FILE": "/nonexistent/key.pem"},
            "taskwire api: JWT_PUBLIC_KEY_FILE: cannot read /nonexistent/key.pem",
        ),
        (
            {"JWT_SECRET": SECRET, "JWT_JWKS_FILE": "/nonexistent/jwks.json"},
            "taskwire api: JWT_SECRET and JWT_JWKS_FILE are set together",
        ),
    ],
)
def test_api_refuses_a_bad_key_configuration_at_start(
    variables: dict[str, str],
    expected: str,
    clean_auth: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clean_auth.setenv("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:1/")
    clean_auth.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    for name, value in variables.items():
        clean_auth.setenv(name, value)
    assert main(["api"]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1
    assert message.startswith(expected)


def test_api_without_auth_warns_loudly(
    clean_auth: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clean_auth.setenv("AUTH_MODE", "none")
    clean_auth.setenv("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:1/")
    clean_auth.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    # The empty database stops the start right after the warning, before anything listens.
    assert main(["api", "--host", "0.0.0.0", "--port", "8123"]) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "taskwire"]
    assert any(
        "NO AUTHENTICATION" in r.getMessage()
        and "ANYONE WHO CAN REACH 0.0.0.0:8123 CAN READ AND CHANGE EVERY TASK" in r.getMessage()
        for r in warnings
    )
