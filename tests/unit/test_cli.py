"""The command line refuses bad configuration at start with one clear line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from taskwire.cli import main


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
