from __future__ import annotations

import pytest

from taskwire.errors import SettingsError
from taskwire.queue import MAX_DELAY_SECONDS
from taskwire.settings import MAX_RETRY_DELAY_SECONDS, Settings


def test_defaults_are_the_embedded_mode() -> None:
    settings = Settings.from_env({})
    assert settings.database_url.startswith("sqlite+aiosqlite://")
    assert settings.rabbitmq_url == "memory://"
    assert settings.redis_url == "memory://"
    assert settings.task_delay_seconds == 5.0
    assert settings.result_ttl_seconds == 60
    assert settings.processor_concurrency == 512
    assert settings.max_input_bytes == 64 * 1024


def test_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql+asyncpg://u@h/db",
            "RABBITMQ_URL": "amqp://guest:guest@h/",
            "REDIS_URL": "redis://h:6379/0",
            "TASK_DELAY_SECONDS": "0.25",
            "PROCESSOR_CONCURRENCY": " 8 ",
        }
    )
    assert settings.task_delay_seconds == 0.25
    assert settings.processor_concurrency == 8
    assert settings.redis_url == "redis://h:6379/0"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TASK_DELAY_SECONDS", "soon"),
        ("TASK_DELAY_SECONDS", "-1"),
        ("TASK_DELAY_SECONDS", "nan"),
        ("RESULT_TTL_SECONDS", "1.5"),
        ("RESULT_TTL_SECONDS", "0"),
        ("PROCESSOR_CONCURRENCY", "0"),
        ("MAX_INPUT_BYTES", "lots"),
        ("DATABASE_URL", "mysql://h/db"),
        ("RABBITMQ_URL", "http://h/"),
        ("REDIS_URL", "localhost:6379"),
        ("RETRY_MAX_SECONDS", "300"),
        ("MAX_ATTEMPTS", "0"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    assert str(caught.value).startswith(f"{name}: ")
    assert repr(value) in str(caught.value)


def test_the_retry_cap_is_what_the_delay_queues_can_hold() -> None:
    assert MAX_RETRY_DELAY_SECONDS == MAX_DELAY_SECONDS
    assert Settings.from_env({"RETRY_MAX_SECONDS": "256"}).retry_max_seconds == 256
